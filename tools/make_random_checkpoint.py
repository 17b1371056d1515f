"""Write a randomly initialized LLaMA checkpoint for a config, in either layout and any MP size.

    python tools/make_random_checkpoint.py --llama_config params.json --tokenizer_path tokenizer.model \\
        --dst out_dir [--format meta_ori|consolidated] [--model_parallel_size 2] [--seed 0]

The weights do not depend on the MP size: the full model is initialized once, then split.
Beside the shards it writes params.json (the merged config) and copies the tokenizer.
"""
from __future__ import annotations

import argparse

import torch

from accessory.api import DTYPES, build_model, model_args
from accessory.checkpoint.load import split_dims
from accessory.checkpoint.save import save_shard, split_state, write_model_files
from accessory.distributed import groups
from accessory.distributed.errors import run_entrypoint
from accessory.tokenizer import Tokenizer

def initialize(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Norm weights 1, everything else N(0, std), drawn in name order from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name.rsplit(".", 2)[-2]:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_random_checkpoint(llama_config: list[str], tokenizer_path: str, dst: str, fmt: str = "consolidated",
                           model_parallel_size: int = 1, seed: int = 0, llama_type: str = "llama",
                           dtype: torch.dtype = torch.float32) -> None:
    tokenizer = Tokenizer(tokenizer_path)
    args = model_args(llama_type, llama_config, tokenizer, model_parallel_size)
    groups.init_model_parallel(1)  # the full model in this one process, split below
    model = build_model(llama_type, args, tokenizer)
    initialize(model, seed)
    full = {name: p.detach().to(dtype) for name, p in model.named_parameters()}
    dims = split_dims(model)
    for rank in range(model_parallel_size):
        save_shard(split_state(full, dims, rank, model_parallel_size), dst, rank, model_parallel_size, fmt)
    write_model_files(dst, model.args, llama_type, tokenizer_path, config_name="params.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama_config", nargs="+", required=True)
    parser.add_argument("--tokenizer_path", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--format", choices=["meta_ori", "consolidated"], default="consolidated")
    parser.add_argument("--model_parallel_size", type=int, default=1)
    parser.add_argument("--llama_type", default="llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args()
    make_random_checkpoint(args.llama_config, args.tokenizer_path, args.dst, args.format,
                           args.model_parallel_size, args.seed, args.llama_type, DTYPES[args.dtype])
    print(f"wrote a random {args.format} checkpoint with {args.model_parallel_size} shard(s) to {args.dst}")


if __name__ == "__main__":
    run_entrypoint(main)
