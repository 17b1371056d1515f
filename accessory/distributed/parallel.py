"""Data parallelism over the data-parallel group, on top of fairscale's tensor parallelism.

`sdp` and `fsdp` use FSDP2 (`fully_shard`, one unit per TransformerBlock plus the root) on a
DeviceMesh made from the data-parallel group: `fsdp` reshards parameters after forward, `sdp`
keeps them gathered until backward (ZeRO-2-like). `ddp` is torch's DistributedDataParallel.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from accessory.checkpoint.load import split_dims
from accessory.distributed import groups


def wrap_data_parallel(model: nn.Module, mode: str) -> nn.Module:
    """`model` (a MetaModel) sharded or replicated over the data-parallel group, in place for FSDP."""
    if mode == "ddp":
        device_ids = [groups.device().index] if groups.device().type == "cuda" else None
        return DistributedDataParallel(model, process_group=groups.dp_group(), device_ids=device_ids)
    mesh = DeviceMesh.from_group(groups.dp_group(), device_type=groups.device().type)
    reshard = mode == "fsdp"
    # Packed quantized weights (QLoRA's NF4) keep their quantization state outside the tensor, so
    # they cannot be sharded: every rank keeps them whole. Frozen and trainable parameters of other
    # dtypes share a unit as they are: FSDP2 all-gathers mixed dtypes, and only the (uniformly
    # fp32) trainable ones are reduce-scattered.
    packed = {p for p in model.parameters() if not p.is_floating_point()}
    for block in model.llma.layers:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, ignored_params=packed)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, ignored_params=packed)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Accumulate gradients locally on non-final micro-steps: no all-reduce/reduce-scatter."""
    if isinstance(model, DistributedDataParallel):
        with (contextlib.nullcontext() if enabled else model.no_sync()):
            yield
        return
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    yield


def full_state_dict(model: nn.Module, names: Optional[set] = None) -> Dict[str, torch.Tensor]:
    """This model-parallel rank's full (unsharded) parameters, on CPU. Collective over the
    data-parallel group: every DP rank must call it; each gets the same tensors."""
    state = {}
    for name, param in unwrap(model).named_parameters():
        if names is not None and name not in names:
            continue
        tensor = param.detach()
        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
        state[name] = tensor.cpu().clone()
    return state


@torch.no_grad()
def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """The true global gradient norm across tensor- and data-parallel ranks; gradients are scaled
    down to `max_norm` when it is positive. Tensor-parallel shards are summed over the model-
    parallel group; replicated parameters (norms) hold the same gradient on every TP rank and count once."""
    module = unwrap(model)
    dims = split_dims(module)
    params = [(n, p) for n, p in module.named_parameters() if p.grad is not None]
    if not params:
        return 0.0
    device = params[0][1].grad.device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # [tensor-parallel shards, replicated]
    dp_sharded = False
    for name, param in params:
        grad = param.grad
        if isinstance(grad, DTensor):
            grad, dp_sharded = grad.to_local(), True
        sums[0 if dims[name] is not None else 1] += grad.detach().double().pow(2).sum()
    if dp_sharded:
        dist.all_reduce(sums, group=groups.dp_group())
    if groups.mp_world() > 1:
        dist.all_reduce(sums[0:1], group=groups.mp_group())  # in place: a view of `sums`
    total = sums.sum().sqrt().item()
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        for _, param in params:
            param.grad.mul_(max_norm / (total + 1e-6))
    return total
