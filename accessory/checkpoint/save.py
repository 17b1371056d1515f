"""Writing checkpoints: atomically (temporary name, then rename), so a crash never leaves a
half-written file under a name that a load or a resume would pick up."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional

import torch

from accessory.checkpoint.formats import MODEL_PREFIX, consolidated_name
from accessory.model.config import model_args_to_json
from accessory.model.llama import ModelArgs


def atomic_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def split_state(full: Dict[str, torch.Tensor], dims: Dict[str, Optional[int]], mp_rank: int,
                mp_size: int) -> Dict[str, torch.Tensor]:
    """Model-parallel rank `mp_rank`'s part of full (unsplit) tensors."""
    return {name: (tensor if dims.get(name) is None else tensor.chunk(mp_size, dims[name])[mp_rank]).clone()
            for name, tensor in full.items()}


def save_shard(state: Dict[str, torch.Tensor], directory: str, mp_rank: int, mp_size: int, kind: str) -> str:
    """One model-parallel rank's tensors (keys `llma.<key>`) in layout `kind` (consolidated or meta_ori)."""
    os.makedirs(directory, exist_ok=True)
    if kind == "meta_ori":
        path = os.path.join(directory, f"consolidated.{mp_rank:02d}.pth")
        atomic_save({name.removeprefix(MODEL_PREFIX): t for name, t in state.items()}, path)
    else:
        path = os.path.join(directory, consolidated_name(mp_rank, mp_size, diff=kind == "diff"))
        atomic_save({"model": state}, path)
    return path


def write_model_files(directory: str, args: ModelArgs, llama_type: str, tokenizer_path: str,
                      config_name: str = "config.json") -> None:
    """The files beside the shards that make a checkpoint directory self-contained: its config,
    meta.json (the llama_type) and the tokenizer, so it loads as --pretrained_path with no other flag."""
    with open(os.path.join(directory, config_name), "w") as f:
        json.dump(model_args_to_json(args), f, indent=2)
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump({"llama_type": llama_type}, f)
    name = "tokenizer.json" if tokenizer_path.endswith(".json") else "tokenizer.model"
    shutil.copyfile(tokenizer_path, os.path.join(directory, name))
