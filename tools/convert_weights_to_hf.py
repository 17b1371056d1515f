"""Convert our checkpoint (a base plus any finetuned deltas, at any model-parallel size) into a
Hugging Face Llama directory that `transformers.LlamaForCausalLM.from_pretrained` loads.

    python tools/convert_weights_to_hf.py --src_weights_path BASE_DIR [DELTA_DIR ...] \\
        --src_config_path params.json [more.json ...] --tokenizer_path tokenizer.model \\
        --dst_weights_path OUT_DIR [--dtype bf16|fp16|fp32] [--max_shard_size 5GB]

The checkpoints load in order exactly as for finetuning (the first is the base; trainable-only ones
overwrite, `.model-diff.pth` deltas add), into full tensors in this one process. OUT_DIR gets
model.safetensors (or shards of at most --max_shard_size with model.safetensors.index.json),
config.json, and the tokenizer with a tokenizer_config.json. Every parameter must have a Llama
equivalent: one that does not (an adapter) is an error, never dropped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from typing import Dict, List, Optional

import torch

from accessory.api import DTYPES, load, read_llama_type
from accessory.checkpoint.formats import MODEL_PREFIX
from accessory.checkpoint.hf import hf_config, hf_names, meta_to_hf
from accessory.distributed.errors import run_entrypoint
from accessory.errors import AccessoryError
from accessory.model.llama import ModelArgs
from accessory.model.peft import PeftArgs, merge_lora
from accessory.tokenizer import Tokenizer

WEIGHT_FILE = re.compile(r"^(model|pytorch_model)\b.*\.(safetensors|bin|json)$")
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def hf_weights(state: Dict[str, torch.Tensor], args: ModelArgs) -> Dict[str, torch.Tensor]:
    """Full `llma.`-prefixed weights under HF names. A tensor that a plain Llama lacks (an adapter
    such as LoRA, which must first be merged into the weight it adapts) is an error naming it."""
    state = {name.removeprefix(MODEL_PREFIX): w for name, w in state.items()}
    unmapped = sorted(set(state) - set(hf_names(args.n_layers)))
    if unmapped:
        raise AccessoryError(f"the model has {len(unmapped)} parameters with no Hugging Face Llama equivalent, "
                             f"e.g. {unmapped[0]}: merge them into the base weights before converting")
    return meta_to_hf(state, args)


def save_safetensors(weights: Dict[str, torch.Tensor], dst: str, dtype: torch.dtype, max_shard_bytes: int) -> List[str]:
    """model.safetensors, or shards of at most `max_shard_bytes` (a larger tensor gets one of its own)
    with model.safetensors.index.json; each shard is cast to `dtype` only as it is written."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise AccessoryError("writing a Hugging Face model needs safetensors: pip install safetensors") from None
    shards: List[List[str]] = [[]]
    shard_bytes = 0
    for name, w in weights.items():
        nbytes = w.numel() * dtype.itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += nbytes
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for file, names in zip(files, shards):
        path, tmp = os.path.join(dst, file), os.path.join(dst, f".{file}.tmp")
        save_file({name: weights[name].to(dtype).contiguous() for name in names}, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)  # no half-written file under the final name
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(w.numel() * dtype.itemsize for w in weights.values())},
                 "weight_map": {name: file for file, names in zip(files, shards) for name in names}}
        with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    return files


def save_tokenizer(tokenizer: Tokenizer, dst: str, model_max_length: int) -> None:
    """The tokenizer file and a tokenizer_config.json naming its class and special tokens
    (a tokenizer_config.json beside a tokenizer.json is copied instead)."""
    path = tokenizer.path
    if path.endswith(".json"):
        shutil.copyfile(path, os.path.join(dst, "tokenizer.json"))
        beside = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.isfile(beside):
            shutil.copyfile(beside, os.path.join(dst, "tokenizer_config.json"))
            return
        from tokenizers import Tokenizer as HFTokenizer
        token = HFTokenizer.from_file(path).id_to_token
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    else:
        shutil.copyfile(path, os.path.join(dst, "tokenizer.model"))
        from sentencepiece import SentencePieceProcessor
        sp = SentencePieceProcessor(model_file=path)
        token = sp.IdToPiece
        config = {"tokenizer_class": "LlamaTokenizer", "unk_token": token(sp.unk_id()), "add_bos_token": True,
                  "add_eos_token": False, "legacy": False}
    config.update(bos_token=token(tokenizer.bos_id), eos_token=token(tokenizer.eos_id), model_max_length=model_max_length)
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def convert(src_weights: List[str], src_config: List[str], tokenizer_path: str, dst: str,
            dtype: torch.dtype = torch.bfloat16, llama_type: Optional[str] = None,
            max_shard_bytes: int = 5 * 10**9) -> None:
    existing = [n for n in sorted(os.listdir(dst)) if WEIGHT_FILE.match(n)] if os.path.isdir(dst) else []
    if existing:  # stale shards or an index beside the new files would be read as part of the model
        raise AccessoryError(f"--dst_weights_path {dst} already holds model weights ({existing[0]}): choose a new directory")
    # A single checkpoint is only copied, so it loads straight into `dtype`; deltas are summed in fp32
    # and rounded once.
    model = load(src_weights, src_config, tokenizer_path, llama_type or read_llama_type(src_weights[-1]),
                 dtype=dtype if len(src_weights) == 1 else torch.float32, log=print)
    if isinstance(model.args, PeftArgs):  # LoRA is folded into the weights it adapts, never dropped
        merged = merge_lora(model)
        state, args = merged.state, merged.args
    else:
        state, args = {name: p.detach() for name, p in model.named_parameters()}, model.args
    weights = hf_weights(state, args)
    os.makedirs(dst, exist_ok=True)
    files = save_safetensors(weights, dst, dtype, max_shard_bytes)
    dtype_name = str(dtype).removeprefix("torch.")
    config = {**hf_config(args, dtype_name), "bos_token_id": model.tokenizer.bos_id,
              "eos_token_id": model.tokenizer.eos_id}
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_tokenizer(model.tokenizer, dst, args.max_seq_len)
    print(f"wrote a Hugging Face Llama ({len(files)} safetensors file(s), {dtype_name}) to {dst}")


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size such as 5GB or 500MB")
    return int(float(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src_weights_path", nargs="+", required=True,
                        help="checkpoint directories: the base first, then deltas or trainable-only checkpoints")
    parser.add_argument("--src_config_path", nargs="+", required=True, help="params.json-style files, merged in order")
    parser.add_argument("--tokenizer_path", required=True, help="tokenizer.model or tokenizer.json")
    parser.add_argument("--dst_weights_path", required=True, help="output directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the written weights")
    parser.add_argument("--llama_type", default=None, help="default: meta.json in the last --src_weights_path, else llama")
    parser.add_argument("--max_shard_size", type=parse_size, default="5GB",
                        help="larger models are split into safetensors files of at most this size")
    args = parser.parse_args()
    convert(args.src_weights_path, args.src_config_path, args.tokenizer_path, args.dst_weights_path,
            DTYPES[args.dtype], args.llama_type, args.max_shard_size)


if __name__ == "__main__":
    run_entrypoint(main)
