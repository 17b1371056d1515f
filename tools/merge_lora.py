"""Fold a llama_peft finetune's LoRA into the base weights: a checkpoint that loads without LoRA.

    python tools/merge_lora.py --pretrained_path BASE DELTA --output_dir OUT \\
        [--llama_config params.json llamaPeft_normBiasLora.json] [--tokenizer_path tokenizer.model] \\
        [--model_parallel_size N] [--dtype bf16|fp16|fp32]

Each LoRA projection's weight becomes W + scale·B·A (computed in fp32); tuned biases and norms are
kept. The output is a plain `llama` checkpoint, unless biases were tuned: plain llama has no
biases, so it is then `llama_peft` with lora_rank -1 (config.json and meta.json say so, and
`accessory.load(OUT)` picks them up). The whole model is built in one process, in --dtype (the
output's): fp32 merges exactly; bf16 rounds the LoRA factors to bf16 before the merge, an error
below that of storing the merged weight in bf16.
"""
from __future__ import annotations

import argparse

import torch

import accessory
from accessory.checkpoint.load import split_dims
from accessory.checkpoint.save import save_shard, split_state, write_model_files
from accessory.api import DTYPES
from accessory.distributed.errors import run_entrypoint
from accessory.model.config import check_model_parallel
from accessory.model.peft import merge_lora

def merge_lora_checkpoint(pretrained_path: list[str], output_dir: str, llama_config: list[str] | None = None,
                          tokenizer_path: str | None = None, llama_type: str = "llama_peft",
                          model_parallel_size: int = 1, dtype: torch.dtype = torch.bfloat16) -> None:
    model = accessory.load(pretrained_path, llama_config, tokenizer_path, llama_type, dtype=dtype, log=print)
    check_model_parallel(model.args, model_parallel_size)
    dims = split_dims(model)
    merged = merge_lora(model)
    for rank in range(model_parallel_size):
        shard = split_state(merged.state, dims, rank, model_parallel_size)
        save_shard(shard, output_dir, rank, model_parallel_size, "consolidated")
    write_model_files(output_dir, merged.args, merged.llama_type, model.tokenizer.path)
    print(f"wrote a merged {merged.llama_type} checkpoint with {model_parallel_size} shard(s) to {output_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_path", nargs="+", required=True, help="the base, then the trained delta")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--llama_config", nargs="+", default=None,
                        help="params.json, then PEFT overrides (default: the last path's config)")
    parser.add_argument("--tokenizer_path", default=None, help="default: the last path's tokenizer")
    parser.add_argument("--llama_type", default="llama_peft")
    parser.add_argument("--model_parallel_size", type=int, default=1, help="shards to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args()
    merge_lora_checkpoint(args.pretrained_path, args.output_dir, args.llama_config, args.tokenizer_path,
                          args.llama_type, args.model_parallel_size, DTYPES[args.dtype])


if __name__ == "__main__":
    run_entrypoint(main)
