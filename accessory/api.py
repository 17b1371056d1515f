"""`accessory.load()`: a ready model from checkpoint directories, in one call, and the pieces it
is made of, which the finetuning entrypoint and the tools share."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from accessory.checkpoint.load import load_pretrained
from accessory.distributed import groups
from accessory.errors import AccessoryError
from accessory.model import get_llama_type
from accessory.model.config import build_model_args, check_model_parallel
from accessory.model.llama import ModelArgs, skip_init
from accessory.model.meta import MetaModel
from accessory.tokenizer import Tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the tools' --dtype choices


def load(pretrained_path: Union[str, Sequence[str]], llama_config: Optional[Sequence[str]] = None,
         tokenizer_path: Optional[str] = None, llama_type: Optional[str] = None, model_parallel_size: int = 1,
         dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
         pretrained_type: Optional[str] = None, log: Callable[[str], None] = lambda message: None) -> MetaModel:
    """Build the model and load `pretrained_path` (base first, then deltas) in eval mode.
    Defaults come from the last path: params.json or config.json, tokenizer.model, meta.json."""
    paths = [pretrained_path] if isinstance(pretrained_path, str) else list(pretrained_path)
    last = paths[-1]
    llama_config = list(llama_config) if llama_config else [find_file(last, ("params.json", "config.json"), "llama_config")]
    tokenizer = Tokenizer(tokenizer_path or find_file(last, ("tokenizer.model", "tokenizer.json"), "tokenizer_path"))
    llama_type = llama_type or read_llama_type(last)
    args = model_args(llama_type, llama_config, tokenizer, model_parallel_size)
    groups.init_model_parallel(model_parallel_size)
    model = build_model(llama_type, args, tokenizer, dtype)
    load_pretrained(model, paths, groups.mp_rank(), model_parallel_size, pretrained_type,
                    may_be_fresh=model.is_added, log=log)
    return model.to(device).eval()


def model_args(llama_type: str, llama_config: Sequence[str], tokenizer: Tokenizer, model_parallel_size: int) -> ModelArgs:
    """The merged config with the tokenizer's vocabulary, checked to split over `model_parallel_size` ranks."""
    args = build_model_args(llama_config, tokenizer.n_words, get_llama_type(llama_type).args_class)
    check_model_parallel(args, model_parallel_size)
    return args


def build_model(llama_type: str, args: ModelArgs, tokenizer: Optional[Tokenizer] = None,
                dtype: torch.dtype = torch.float32,
                init_method: Callable[[torch.Tensor], torch.Tensor] = skip_init) -> MetaModel:
    """The model split over the current model-parallel group (a group of one if none was set up),
    its weights left unset (to be loaded) or initialized by `init_method`."""
    if not groups.model_parallel_ready():
        groups.init_model_parallel(1)
    with default_dtype(dtype):
        return MetaModel(llama_type, args, tokenizer, init_method=init_method)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build parameters directly in `dtype`: fairscale allocates with the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def read_llama_type(directory: str) -> str:
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.isfile(meta_path):
        return "llama"
    with open(meta_path) as f:
        return json.load(f).get("llama_type", "llama")


def find_file(directory: str, names: Sequence[str], what: str) -> str:
    if not os.path.isdir(directory):
        raise AccessoryError(f"checkpoint directory {directory} does not exist (pretrained_path)")
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise AccessoryError(f"{directory} holds none of {', '.join(names)}: pass {what} explicitly")
