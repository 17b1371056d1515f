"""Training checkpoints in LLaMA2-Accessory's layout, plus what an exact resume needs.

    output_dir/epoch{E}/  or  output_dir/epoch{E}-iter{I}/
        consolidated.{mp:02d}-of-{MP:02d}.model.pth   {"model": full weights of that MP rank}
        config.json, meta.json, tokenizer.model        so the directory is a --pretrained_path
        train_state.pth                                epoch, position, loader state
        rank.{r:05d}-of-{W:05d}.pth                    each rank's optimizer shard, RNG, grad scaler
    output_dir/latest                                  the name of the newest complete checkpoint

Everything is plain tensors, dicts and lists (loads with weights_only=True). A checkpoint is
written into a temporary directory and renamed into place once complete, and only then does
`latest` point to it: a crash mid-save never leaves a checkpoint that resume would pick.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from accessory.checkpoint.save import save_shard, write_model_files
from accessory.distributed import groups
from accessory.distributed.parallel import full_state_dict, unwrap
from accessory.errors import AccessoryError

CHECKPOINT_NAME = re.compile(r"^epoch(\d+)(?:-iter(\d+))?$")


def save_checkpoint(output_dir: str, name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[Any], train_state: Dict[str, Any], only_trainable: bool,
                    keep_last: int = 0) -> str:
    """Collective: every rank calls it. Returns the checkpoint's directory."""
    rank, world = dist.get_rank(), dist.get_world_size()
    final, tmp = os.path.join(output_dir, name), os.path.join(output_dir, f".tmp-{name}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    module = unwrap(model)
    names = {n for n, p in module.named_parameters() if p.requires_grad} if only_trainable else None
    weights = full_state_dict(model, names)
    if groups.dp_rank() == 0:
        save_shard(weights, tmp, groups.mp_rank(), groups.mp_world(), "consolidated")
    del weights
    torch.save({"optimizer": _local_optimizer_state(optimizer), "rng": _rng_state(),
                "scaler": scaler.state_dict() if scaler is not None else None},
               os.path.join(tmp, f"rank.{rank:05d}-of-{world:05d}.pth"))
    if rank == 0:
        _write_side_files(tmp, module, train_state, world)
    dist.barrier()
    if rank == 0:
        _publish(output_dir, tmp, final, name, keep_last)
    dist.barrier()
    return final


def _write_side_files(directory: str, module: nn.Module, train_state: Dict[str, Any], world: int) -> None:
    write_model_files(directory, module.args, module.llama_type, module.tokenizer.path)
    state = {**train_state, "world_size": world, "model_parallel_size": groups.mp_world()}
    torch.save(state, os.path.join(directory, "train_state.pth"))


def _publish(output_dir: str, tmp: str, final: str, name: str, keep_last: int) -> None:
    if os.path.exists(final):  # an earlier run's checkpoint of the same name: replaced
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = os.path.join(output_dir, ".latest.tmp")
    with open(latest_tmp, "w") as f:
        f.write(name + "\n")
    os.replace(latest_tmp, os.path.join(output_dir, "latest"))
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            if old != name:
                shutil.rmtree(os.path.join(output_dir, old))


def list_checkpoints(output_dir: str) -> list:
    """Complete checkpoint directories, oldest first."""
    found = []
    for entry in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        match = CHECKPOINT_NAME.match(entry)
        if match and os.path.isfile(os.path.join(output_dir, entry, "train_state.pth")):
            found.append(((int(match.group(1)), int(match.group(2) or 1 << 60)), entry))
    return [entry for _, entry in sorted(found)]


def resolve_resume(resume: str, output_dir: str) -> Optional[str]:
    """The checkpoint directory to resume from; None for a fresh start (`auto` with none yet)."""
    if not resume:
        return None
    if resume == "auto":
        latest = os.path.join(output_dir, "latest")
        if not os.path.isfile(latest):
            return None
        with open(latest) as f:
            resume = os.path.join(output_dir, f.read().strip())
    if not os.path.isfile(os.path.join(resume, "train_state.pth")):
        raise AccessoryError(f"--resume {resume}: not a complete training checkpoint (no train_state.pth)")
    return resume


def load_resume_state(directory: str, optimizer: torch.optim.Optimizer, scaler: Optional[Any]) -> Dict[str, Any]:
    """Restore this rank's optimizer shard, RNG and grad scaler; returns the training position.
    The weights were loaded with the pretrained ones."""
    rank, world = dist.get_rank(), dist.get_world_size()
    state = torch.load(os.path.join(directory, "train_state.pth"), weights_only=True)
    if (state["world_size"], state["model_parallel_size"]) != (world, groups.mp_world()):
        raise AccessoryError(f"--resume {directory} was saved by {state['world_size']} processes at model-parallel "
                             f"size {state['model_parallel_size']}; this job has {world} at {groups.mp_world()}: "
                             f"resume with the same layout, or start a new run with it as --pretrained_path")
    own = torch.load(os.path.join(directory, f"rank.{rank:05d}-of-{world:05d}.pth"), weights_only=True)
    _load_local_optimizer_state(optimizer, own["optimizer"])
    _set_rng_state(own["rng"])
    if scaler is not None and own["scaler"] is not None:
        scaler.load_state_dict(own["scaler"])
    return state


def _local_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with each DTensor replaced by this rank's local shard."""
    state = optimizer.state_dict()
    state["state"] = {index: {key: value.to_local() if isinstance(value, DTensor) else value
                              for key, value in entry.items()} for index, entry in state["state"].items()}
    return state


def _load_local_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state["state"].items():
        param = params[index]
        if isinstance(param, DTensor):
            for key, value in entry.items():
                if torch.is_tensor(value) and value.shape == param.to_local().shape and value.dim() > 0:
                    entry[key] = DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                                    shape=param.shape, stride=param.stride(), run_check=False)
    optimizer.load_state_dict(state)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
