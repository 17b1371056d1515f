"""Convert a Hugging Face Llama directory into our checkpoint layout.

    python tools/convert_hf_to_accessory.py --src HF_DIR --dst OUT_DIR [--model_parallel_size N]
        [--format consolidated|meta_ori] [--dtype bf16|fp16|fp32]

HF_DIR holds config.json and model.safetensors, pytorch_model.bin, or either one sharded with its
index json. OUT_DIR gets the shards (`consolidated.NN-of-MM.model.pth`, or Meta's `consolidated.NN.pth`),
params.json translated from config.json, and the tokenizer files found in HF_DIR. The rows of wq and
wk are permuted back from HF's rotary layout to Meta's, exactly. Tensors are read one at a time and
one output rank is written at a time, so memory stays near one rank's share of the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any, Dict, Iterator, Optional

import torch

from accessory.api import DTYPES, build_model
from accessory.checkpoint.formats import MODEL_PREFIX
from accessory.checkpoint.hf import from_hf_tensor, hf_sources, params_from_hf_config
from accessory.checkpoint.load import split_dims
from accessory.checkpoint.save import save_shard, split_state
from accessory.distributed import groups
from accessory.distributed.errors import run_entrypoint
from accessory.errors import AccessoryError
from accessory.model.config import check_model_parallel
from accessory.model.llama import ModelArgs

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")


class HFWeights(Mapping):
    """The tensors of an HF checkpoint directory by name, each read from its file only when asked for
    (safetensors through safe_open, .bin files memory-mapped with weights_only=True)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.files: Dict[str, str] = {}  # tensor name -> the file holding it
        self._handles: Dict[str, Any] = {}
        name = next((n for n in WEIGHT_FILES if os.path.isfile(os.path.join(directory, n))), None)
        if name is None:
            raise AccessoryError(f"{directory} holds none of {', '.join(WEIGHT_FILES)}: --src must be a Hugging Face "
                                 "model directory")
        if name.endswith(".index.json"):
            self._read_index(os.path.join(directory, name))
        else:
            path = os.path.join(directory, name)
            self.files = dict.fromkeys(self._handle(path).keys(), path)

    def _read_index(self, index_path: str) -> None:
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise AccessoryError(f"{index_path} is not a valid index (a JSON object with a weight_map)") from None
        self.files = {key: os.path.join(self.directory, file) for key, file in weight_map.items()}
        absent = sorted({path for path in self.files.values() if not os.path.isfile(path)})
        if absent:
            raise AccessoryError(f"{absent[0]}, listed in {index_path}, does not exist: download all of the model's shards")

    def _handle(self, path: str) -> Any:
        if path not in self._handles:
            try:
                if path.endswith(".safetensors"):
                    from safetensors import safe_open
                    self._handles[path] = safe_open(path, framework="pt")
                else:
                    self._handles[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # safetensors and torch raise assorted types for damaged files
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise AccessoryError(f"{path} is truncated or corrupt ({reason}): re-download it") from None
        return self._handles[path]

    def __getitem__(self, name: str) -> torch.Tensor:
        handle = self._handle(self.files[name])
        return handle.get_tensor(name) if self.files[name].endswith(".safetensors") else handle[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def read_params(src: str) -> dict:
    """params.json values (Meta keys, with the vocabulary size) for HF_DIR/config.json."""
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise AccessoryError(f"{src} has no config.json: --src must be a Hugging Face model directory")
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise AccessoryError(f"{path} is not valid JSON: {e}") from None
    if config.get("model_type") != "llama":
        raise AccessoryError(f"{path}: model_type is '{config.get('model_type')}', not 'llama': only Llama models convert")
    try:
        return {**params_from_hf_config(config, source=path), "vocab_size": config["vocab_size"]}
    except KeyError as e:
        raise AccessoryError(f"{path} lacks the key {e.args[0]}, which every Llama config.json has") from None


def convert(src: str, dst: str, model_parallel_size: int = 1, fmt: str = "consolidated",
            dtype: Optional[torch.dtype] = None) -> None:
    """Write HF_DIR `src` as our checkpoint in `dst`; `dtype` None keeps each tensor's own."""
    params = read_params(src)
    args = ModelArgs(**params)
    check_model_parallel(args, model_parallel_size)
    weights = HFWeights(src)
    sources = hf_sources(weights, args, source=src)  # Meta key -> HF key, with every weight accounted for
    groups.init_model_parallel(1)
    dims = split_dims(build_model("llama", args))  # for the split dims only: never initialized
    for rank in range(model_parallel_size):
        shard = {}
        for meta_key, hf_key in sources.items():
            full = from_hf_tensor(meta_key, weights[hf_key], args)
            shard.update(split_state({MODEL_PREFIX + meta_key: full.to(dtype or full.dtype)}, dims, rank,
                                     model_parallel_size))
        save_shard(shard, dst, rank, model_parallel_size, fmt)
        print(f"wrote model-parallel rank {rank} of {model_parallel_size} ({len(shard)} tensors)")
        del shard
    with open(os.path.join(dst, "params.json"), "w") as f:
        json.dump(params, f, indent=2)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="Hugging Face model directory (config.json and weights)")
    parser.add_argument("--dst", required=True, help="output checkpoint directory")
    parser.add_argument("--model_parallel_size", type=int, default=1, help="number of shards to write")
    parser.add_argument("--format", choices=["consolidated", "meta_ori"], default="consolidated", help="output layout")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="output dtype (default: each tensor's dtype in --src)")
    args = parser.parse_args()
    if args.model_parallel_size < 1:
        parser.error("--model_parallel_size must be at least 1")
    convert(args.src, args.dst, args.model_parallel_size, args.format, DTYPES.get(args.dtype))


if __name__ == "__main__":
    run_entrypoint(main)
