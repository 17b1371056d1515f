"""Load checkpoints of any model-parallel size into a model of any model-parallel size.

Each parameter's split comes from its layer type (`split_dim`). A rank copies only the region of
the full tensor that it owns, from whichever source shards overlap it. Shards are memory-mapped and
re-opened for each transformer layer, so mapped pages are released as loading goes and a rank's
peak memory stays near its own share of the weights rather than the whole checkpoint.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from fairscale.nn.model_parallel.layers import (ColumnParallelLinear, ParallelEmbedding, RowParallelLinear,
                                                VocabParallelEmbedding)
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from accessory.checkpoint.formats import (MODEL_PREFIX, CheckpointFiles, check_pretrained_type, find_checkpoint,
                                          open_shard, release_pages)
from accessory.errors import AccessoryError

IGNORED_KEYS = {MODEL_PREFIX + "rope.freqs"}  # Meta's precomputed rotary table; we compute it
ROW_BLOCK_BYTES = 32 << 20
Box = List[Tuple[int, int]]  # a region of a tensor: (start, stop) along each dim


def split_dims(model: nn.Module) -> Dict[str, Optional[int]]:
    """The dim along which each parameter is split across model-parallel ranks (None: replicated)."""
    dims: Dict[str, Optional[int]] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            dims[f"{module_name}.{param_name}" if module_name else param_name] = _split_dim(module, param_name)
    return dims


def _split_dim(module: nn.Module, param_name: str) -> Optional[int]:
    if isinstance(module, ColumnParallelLinear):
        return 0  # weight [out/mp, in] and bias [out/mp]
    if isinstance(module, RowParallelLinear):
        return 1 if param_name == "weight" else None  # its bias is added after the all-reduce
    if isinstance(module, ParallelEmbedding):
        return 1
    if isinstance(module, VocabParallelEmbedding):
        return 0
    return None


def load_pretrained(model: nn.Module, paths: Sequence[str], mp_rank: int, mp_size: int,
                    pretrained_type: Optional[str] = None,
                    may_be_fresh: Callable[[str], bool] = lambda name: False,
                    log: Callable[[str], None] = print) -> None:
    """Load `paths` in order into `model`: the first is the base (every parameter must be there
    unless `may_be_fresh` says the model adds it on purpose), later ones overwrite the parameters
    they hold (trainable-only checkpoints) or add to them (`.model-diff.pth` deltas)."""
    checkpoints = [find_checkpoint(path) for path in paths]
    check_pretrained_type(checkpoints[0], pretrained_type)
    params = dict(model.named_parameters())
    dims = split_dims(model)
    for index, ckpt in enumerate(checkpoints):
        loaded = load_into(params, dims, ckpt, mp_rank, mp_size)
        if index == 0:
            fresh = sorted(set(params) - loaded)
            missing = [name for name in fresh if not may_be_fresh(name)]
            if missing:
                raise AccessoryError(f"checkpoint {ckpt.directory} lacks {len(missing)} parameters of the model: "
                                     f"{_listing(missing)}; check llama_config and llama_type")
            if fresh:
                log(f"{len(fresh)} parameters not in {ckpt.directory} start freshly initialized: {_listing(fresh)}")
        log(f"loaded {ckpt.kind} checkpoint {ckpt.directory} ({ckpt.mp_size} shard(s)) into model-parallel "
            f"rank {mp_rank} of {mp_size}: {len(loaded)} parameters")


def load_into(params: Dict[str, torch.Tensor], dims: Dict[str, Optional[int]], ckpt: CheckpointFiles,
              mp_rank: int, mp_size: int) -> set:
    """Fill `params` (this rank's local tensors, split along `dims`) from `ckpt`; returns the names loaded.
    A diff checkpoint adds onto the values already there."""
    add = ckpt.kind == "diff"
    keys = _shard_keys(ckpt)
    unexpected = sorted(set(keys) - set(params) - IGNORED_KEYS)
    if unexpected:
        raise AccessoryError(f"checkpoint {ckpt.directory} has {len(unexpected)} keys the model does not: "
                             f"{_listing(unexpected)}; check llama_config and llama_type")
    names = [name for name in keys if name in params]
    for group in _by_layer(names):
        shards = [open_shard(path) for path in ckpt.files]  # fresh maps per layer: pages are released after
        for name in group:
            sources = [shard.get(name) for shard in shards]
            if any(source is None for source in sources):
                absent = [os.path.basename(f) for f, s in zip(ckpt.files, sources) if s is None]
                raise AccessoryError(f"checkpoint {ckpt.directory}: key {name} is missing from {', '.join(absent)}")
            _copy_region(params[name], name, sources, ckpt, dims[name], mp_rank, mp_size, add)
        del shards
    return set(names)


def _shard_keys(ckpt: CheckpointFiles) -> List[str]:
    keys: Dict[str, None] = {}
    for path in ckpt.files:
        keys.update(dict.fromkeys(open_shard(path)))
    return list(keys)


def _by_layer(names: Iterable[str]) -> List[List[str]]:
    groups: Dict[str, List[str]] = defaultdict(list)
    for name in names:
        match = re.search(r"\.layers\.(\d+)\.", name)
        groups[match.group(1) if match else ""].append(name)
    return list(groups.values())


@torch.no_grad()
def _copy_region(param: torch.Tensor, name: str, sources: List[torch.Tensor], ckpt: CheckpointFiles,
                 dim: Optional[int], mp_rank: int, mp_size: int, add: bool) -> None:
    """Copy (or add) into `param`, this rank's part of the full tensor, the overlapping parts of
    each source shard. A parameter already sharded over data-parallel ranks (an FSDP2 DTensor)
    receives only its own rows."""
    full_shape = list(param.shape)
    if dim is not None:
        full_shape[dim] *= mp_size
    target = [(0, n) for n in full_shape]
    if dim is not None:
        target[dim] = (mp_rank * param.shape[dim], (mp_rank + 1) * param.shape[dim])
    local = param
    if isinstance(param, DTensor):
        local, (first, last) = _local_rows(param)
        target[0] = (target[0][0] + first, target[0][0] + last)
    for source, box in zip(sources, _source_boxes(name, sources, full_shape, ckpt)):
        overlap = [(max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(target, box)]
        if any(start >= stop for start, stop in overlap):
            continue
        dst = local[tuple(slice(s - t, e - t) for (s, e), (t, _) in zip(overlap, target))]
        src = source[tuple(slice(s - b, e - b) for (s, e), (b, _) in zip(overlap, box))]
        _copy_in_row_blocks(dst, src, add)


def _local_rows(param: DTensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """This rank's local tensor of a parameter sharded along dim 0 (FSDP2) and the rows it holds:
    its chunk in torch.chunk's layout, which DTensor's Shard(0) follows."""
    if tuple(param.placements) != (Shard(0),):
        raise ValueError(f"can only load into parameters sharded along dim 0, not {param.placements}")
    local = param.to_local()
    chunk = -(-param.shape[0] // param.device_mesh.size())
    start = min(param.device_mesh.get_local_rank() * chunk, param.shape[0])
    return local, (start, start + local.shape[0])


def _copy_in_row_blocks(dst: torch.Tensor, src: torch.Tensor, add: bool) -> None:
    """dst (+)= src, a block of rows at a time, handing each block's mapped file pages back to the
    kernel once copied. A slice along dim 1 (a row-parallel weight, the embedding) reads every page
    of the source: without this, all of them would count in this rank's memory until the shard closes."""
    dst, src = torch.atleast_1d(dst), torch.atleast_1d(src)
    rows_per_block = max(1, ROW_BLOCK_BYTES // max(1, src[0].numel() * src.element_size()))
    for start in range(0, src.shape[0], rows_per_block):
        block, target = src[start:start + rows_per_block], dst[start:start + rows_per_block]
        if add:  # in fp32, rounded once to the parameter's dtype: a delta over a bf16 base stays exact
            target.copy_(target.float() + block.float())
        else:
            target.copy_(block)
        release_pages(block)


def _source_boxes(name: str, sources: List[torch.Tensor], full_shape: List[int], ckpt: CheckpointFiles) -> List[Box]:
    """Where each source shard sits in the full tensor. The split dim is read off the shard shapes,
    so checkpoints written by other tools (e.g. a vocab-parallel embedding) load as well."""
    shapes = [list(s.shape) for s in sources]
    if all(shape == full_shape for shape in shapes):
        for path, source in zip(ckpt.files[1:], sources[1:]):
            if not torch.equal(source, sources[0]):
                raise AccessoryError(f"checkpoint {ckpt.directory}: replicated key {name} differs between "
                                     f"{os.path.basename(ckpt.files[0])} and {os.path.basename(path)}")
        return [[(0, n) for n in full_shape]] + [[(0, 0)] * len(full_shape)] * (len(sources) - 1)
    for dim in range(len(full_shape)):
        others_match = all(len(s) == len(full_shape) and all(s[d] == full_shape[d] for d in range(len(s)) if d != dim)
                           for s in shapes)
        if others_match and sum(s[dim] for s in shapes) == full_shape[dim]:
            boxes, start = [], 0
            for shape in shapes:
                box = [(0, n) for n in full_shape]
                box[dim] = (start, start + shape[dim])
                boxes.append(box)
                start += shape[dim]
            return boxes
    raise AccessoryError(_shape_error(name, shapes, full_shape, ckpt))


def _shape_error(name: str, shapes: List[List[int]], full_shape: List[int], ckpt: CheckpointFiles) -> str:
    found = " + ".join(str(tuple(s)) for s in shapes)
    message = (f"checkpoint {ckpt.directory}: {name} has shape {found} in {os.path.basename(ckpt.files[0])}"
               f"{'...' if len(shapes) > 1 else ''} but the model expects {tuple(full_shape)}")
    if name.endswith(("tok_embeddings.weight", "output.weight")):
        message += ("; the tokenizer's vocabulary size differs from the checkpoint's embedding rows: "
                    "use the tokenizer the checkpoint was trained with")
    else:
        message += "; check llama_config against the checkpoint's params.json"
    return message


def _listing(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
