"""Load each checkpoint with accessory.load at the job's world size as MP size and save rank 0's
logits for the given tokens: `dump_logits.py OUT.pt TOKENS.pt CKPT_DIR [CKPT_DIR...]`."""
import os
import sys

import torch

import accessory
from accessory.distributed.errors import run_entrypoint


def main() -> None:
    out, tokens_path, *checkpoints = sys.argv[1:]
    tokens = torch.load(tokens_path, weights_only=True)
    mp = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for ckpt in checkpoints:
        model = accessory.load(ckpt, model_parallel_size=mp)
        with torch.no_grad():
            results[ckpt] = model.llma(tokens)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out)


if __name__ == "__main__":
    run_entrypoint(main)
