"""The model registry: `llama_type` names a variant of the one LLaMA implementation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from torch import nn

from accessory.errors import AccessoryError
from accessory.model import peft
from accessory.model.llama import ModelArgs, Transformer


@dataclass(frozen=True)
class LlamaType:
    args_class: type  # the dataclass its llama_config files fill
    build: Callable[..., nn.Module]  # (args, init_method) -> the LLaMA
    is_trainable: Callable[[ModelArgs, str], bool]  # by config and parameter name (without the llma. prefix)
    is_added: Callable[[str], bool]  # parameters the variant adds, absent from base checkpoints


LLAMA_TYPES: Dict[str, LlamaType] = {
    "llama": LlamaType(ModelArgs, Transformer, is_trainable=lambda args, name: True, is_added=lambda name: False),
    "llama_peft": LlamaType(peft.PeftArgs, peft.build, peft.is_trainable, peft.is_added),
}


def get_llama_type(name: str) -> LlamaType:
    if name not in LLAMA_TYPES:
        raise AccessoryError(f"unknown llama_type '{name}'; known: {', '.join(sorted(LLAMA_TYPES))}")
    return LLAMA_TYPES[name]
