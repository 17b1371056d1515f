"""Change a checkpoint's model-parallel size offline.

    python tools/reshard.py --src CKPT_DIR --dst OUT_DIR --model_parallel_size N [--format consolidated|meta_ori]

Works for base, trainable-only and `.model-diff.pth` checkpoints; one target rank is built at a time.
The config (params.json/config.json), meta.json and tokenizer files beside the shards are copied.
"""
from __future__ import annotations

import argparse
import os
import shutil

import torch

from accessory.api import build_model, model_args, read_llama_type
from accessory.checkpoint.formats import CheckpointFiles, find_checkpoint, open_shard
from accessory.checkpoint.load import load_into, split_dims
from accessory.checkpoint.save import save_shard
from accessory.distributed import groups
from accessory.distributed.errors import run_entrypoint
from accessory.errors import AccessoryError
from accessory.tokenizer import Tokenizer

SIDE_FILES = ("params.json", "config.json", "meta.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json")


def reshard(src: str, dst: str, model_parallel_size: int, fmt: str | None = None,
            llama_config: list[str] | None = None, tokenizer_path: str | None = None) -> None:
    ckpt = find_checkpoint(src)
    fmt = fmt or ("diff" if ckpt.kind == "diff" else ckpt.kind)
    if ckpt.kind == "diff" and fmt != "diff":
        raise AccessoryError(f"{src} holds deltas (.model-diff.pth): they can only be written as deltas")
    config = llama_config or [p for p in (os.path.join(src, n) for n in ("params.json", "config.json")) if os.path.isfile(p)][:1]
    tokenizer = tokenizer_path or next((p for p in (os.path.join(src, n) for n in ("tokenizer.model", "tokenizer.json"))
                                        if os.path.isfile(p)), None)
    if not config or tokenizer is None:
        raise AccessoryError(f"{src} lacks params.json/config.json or a tokenizer: pass --llama_config and --tokenizer_path")
    llama_type = read_llama_type(src)
    args = model_args(llama_type, config, Tokenizer(tokenizer), model_parallel_size)
    groups.init_model_parallel(1)
    model = build_model(llama_type, args)  # for its shapes and split dims only: never initialized
    dims = split_dims(model)
    for rank in range(model_parallel_size):
        targets = {name: torch.zeros(_local_shape(p.shape, dims[name], model_parallel_size), dtype=_dtype_of(ckpt))
                   for name, p in model.named_parameters()}
        loaded = load_into(targets, dims, ckpt, rank, model_parallel_size)
        save_shard({name: targets[name] for name in targets if name in loaded}, dst, rank, model_parallel_size, fmt)
        print(f"wrote model-parallel rank {rank} of {model_parallel_size} ({len(loaded)} tensors)")
    for name in SIDE_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def _local_shape(full: torch.Size, dim: int | None, mp: int) -> list[int]:
    shape = list(full)
    if dim is not None:
        shape[dim] //= mp
    return shape


def _dtype_of(ckpt: CheckpointFiles) -> torch.dtype:
    """Keep the checkpoint's own dtype (a bf16 checkpoint stays bf16)."""
    return next(iter(open_shard(ckpt.files[0]).values())).dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="checkpoint directory")
    parser.add_argument("--dst", required=True, help="output directory")
    parser.add_argument("--model_parallel_size", type=int, required=True, help="the new number of shards")
    parser.add_argument("--format", choices=["consolidated", "meta_ori"], default=None,
                        help="output layout (default: the source's)")
    parser.add_argument("--llama_config", nargs="+", default=None, help="default: params.json/config.json in --src")
    parser.add_argument("--tokenizer_path", default=None, help="default: the tokenizer in --src")
    args = parser.parse_args()
    reshard(args.src, args.dst, args.model_parallel_size, args.format, args.llama_config, args.tokenizer_path)


if __name__ == "__main__":
    run_entrypoint(main)
