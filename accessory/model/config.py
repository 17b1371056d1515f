"""`llama_config`: params.json-style JSON files merged in order, later keys winning (LLaMA2-Accessory's rule)."""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from accessory.errors import AccessoryError
from accessory.model.llama import ModelArgs


def read_config_files(paths: Sequence[str], args_class: type = ModelArgs) -> dict:
    """Merge the JSON objects in `paths`; a key `args_class` does not know is an error naming it."""
    valid = {f.name for f in dataclasses.fields(args_class)}
    merged: dict = {}
    for path in paths:
        try:
            with open(path) as f:
                values = json.load(f)
        except FileNotFoundError:
            raise AccessoryError(f"llama_config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise AccessoryError(f"llama_config file {path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise AccessoryError(f"llama_config file {path} must hold a JSON object, not {type(values).__name__}")
        for key in values:
            if key not in valid:
                raise AccessoryError(f"llama_config file {path}: unknown key '{key}'; valid keys: {', '.join(sorted(valid))}")
        merged.update(values)
    return merged


def build_model_args(config_paths: Sequence[str], vocab_size: int, args_class: type = ModelArgs) -> ModelArgs:
    """The merged configs with the tokenizer's vocabulary size."""
    values = read_config_files(config_paths, args_class)
    configured = values.get("vocab_size", -1)
    if configured not in (-1, None, vocab_size):
        raise AccessoryError(f"llama_config sets vocab_size={configured} but the tokenizer has {vocab_size} "
                             "tokens: use the tokenizer the model was trained with")
    values["vocab_size"] = vocab_size
    args = args_class(**values)
    if args.dim % args.n_heads:
        raise AccessoryError(f"llama_config: dim={args.dim} is not divisible by n_heads={args.n_heads}")
    if args.n_heads % args.kv_heads:
        raise AccessoryError(f"llama_config: n_heads={args.n_heads} is not divisible by n_kv_heads={args.kv_heads}")
    return args


def check_model_parallel(args: ModelArgs, model_parallel_size: int) -> None:
    """Every tensor-parallel split must be whole: heads, KV heads, the FFN hidden size, the vocabulary."""
    splits = {"n_heads": args.n_heads, "n_kv_heads": args.kv_heads, "dim": args.dim,
              "the feed-forward hidden size": args.ffn_hidden_dim, "vocab_size": args.vocab_size}
    for name, value in splits.items():
        if value % model_parallel_size:
            raise AccessoryError(f"model_parallel_size={model_parallel_size} does not divide {name}={value}: "
                                 f"choose a model-parallel size that divides it")


def model_args_to_json(args: ModelArgs) -> dict:
    return dataclasses.asdict(args)
