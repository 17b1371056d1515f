"""Data parallelism over the data-parallel group, on top of fairscale's tensor parallelism.

`sdp` and `fsdp` use FSDP2 (`fully_shard`, one unit per TransformerBlock plus the root) on a
DeviceMesh made from the data-parallel group: `fsdp` reshards parameters after forward, `sdp`
keeps them gathered until backward (ZeRO-2-like). `ddp` is torch's DistributedDataParallel.
"""
from __future__ import annotations

import contextlib
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
    """`model` (a MetaModel) on this rank's device, sharded or replicated over the data-parallel
    group (in place for FSDP, whose `fully_shard` moves each unit to the device itself, one at a
    time). A data-parallel group of one has nothing to shard or average: the model is only moved,
    which spares FSDP's copies in and out of its flat buffers (the numbers are the same either way)."""
    if groups.dp_world() == 1:
        return model.to(groups.device())
    if mode == "ddp":
        device_ids = [groups.device().index] if groups.device().type == "cuda" else None
        return DistributedDataParallel(model.to(groups.device()), process_group=groups.dp_group(),
                                       device_ids=device_ids)
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
def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The true global gradient norm across tensor- and data-parallel ranks (a 0-dim device tensor:
    nothing waits on the device); gradients are scaled down to `max_norm` when it is positive and the
    norm is finite. Tensor-parallel shards are summed over the model-parallel group; replicated
    parameters (norms) hold the same gradient on every TP rank and count once."""
    module = unwrap(model)
    dims = split_dims(module)
    params = [(n, p) for n, p in module.named_parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), dtype=torch.float64)
    local = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for _, p in params]
    dp_sharded = any(isinstance(p.grad, DTensor) for _, p in params)
    tp_sharded = [g for g, (name, _) in zip(local, params) if dims[name] is not None]
    replicated = [g for g, (name, _) in zip(local, params) if dims[name] is None]
    # [sum of squares of tensor-parallel shards, of replicated tensors]: split on the host, so that
    # nothing here waits on the device; one fused norm pass per list, as torch's own clipping
    sums = torch.stack([_square_sum(tp_sharded, local[0]), _square_sum(replicated, local[0])])
    if dp_sharded:
        dist.all_reduce(sums, group=groups.dp_group())
    if groups.mp_world() > 1:
        dist.all_reduce(sums[0:1], group=groups.mp_group())  # in place: a view of `sums`
    total = sums.sum().sqrt()
    if max_norm > 0:  # a factor of exactly 1 below max_norm or for a non-finite norm: gradients unchanged
        factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(local, torch.where(total.isfinite(), factor, 1.0).to(local[0].dtype))
    return total


def _square_sum(tensors: list, like: torch.Tensor) -> torch.Tensor:
    if not tensors:
        return torch.zeros((), dtype=torch.float64, device=like.device)
    return torch.stack(torch._foreach_norm(tensors)).double().pow(2).sum()
