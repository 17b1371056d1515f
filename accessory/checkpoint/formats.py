"""Checkpoint layouts, recognized from file names.

- meta_ori:      Meta's `consolidated.NN.pth`, Meta key names, one file per model-parallel rank.
- consolidated:  `consolidated.NN-of-MM.model.pth` holding `{"model": {"llma.<key>": tensor}}`
                 (LLaMA2-Accessory's layout and ours).
- diff:          `consolidated.NN-of-MM.model-diff.pth`, same content, added onto earlier weights.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from accessory.errors import AccessoryError

PATTERNS = {
    "meta_ori": re.compile(r"^consolidated\.(\d+)\.pth$"),
    "consolidated": re.compile(r"^consolidated\.(\d+)-of-(\d+)\.model\.pth$"),
    "diff": re.compile(r"^consolidated\.(\d+)-of-(\d+)\.model-diff\.pth$"),
}
MODEL_PREFIX = "llma."  # our and LLaMA2-Accessory's state-dict keys: the LLaMA sits in wrapper.llma


@dataclass
class CheckpointFiles:
    """One checkpoint directory: its layout and its shard files in model-parallel rank order."""

    directory: str
    kind: str
    files: List[str]

    @property
    def mp_size(self) -> int:
        return len(self.files)


def consolidated_name(mp_rank: int, mp_size: int, diff: bool = False) -> str:
    return f"consolidated.{mp_rank:02d}-of-{mp_size:02d}.model{'-diff' if diff else ''}.pth"


def find_checkpoint(directory: str) -> CheckpointFiles:
    """The shards in `directory`; an error names what is missing or mixed."""
    if not os.path.isdir(directory):
        raise AccessoryError(f"checkpoint directory {directory} does not exist (pretrained_path)")
    found: Dict[str, Dict[int, str]] = {kind: {} for kind in PATTERNS}
    declared_sizes = set()
    for name in sorted(os.listdir(directory)):
        for kind, pattern in PATTERNS.items():
            match = pattern.match(name)
            if match:
                found[kind][int(match.group(1))] = os.path.join(directory, name)
                if kind != "meta_ori":
                    declared_sizes.add(int(match.group(2)))
    kinds = [kind for kind, shards in found.items() if shards]
    if not kinds:
        raise AccessoryError(f"checkpoint directory {directory} holds no checkpoint shards: expected "
                             "consolidated.00.pth (meta_ori) or consolidated.00-of-01.model.pth (consolidated)")
    if len(kinds) > 1:
        raise AccessoryError(f"checkpoint directory {directory} mixes layouts ({', '.join(kinds)}): keep one per directory")
    kind = kinds[0]
    shards = found[kind]
    size = declared_sizes.pop() if declared_sizes else len(shards)
    if declared_sizes:
        raise AccessoryError(f"checkpoint directory {directory} mixes shard counts in its file names")
    missing = [i for i in range(size) if i not in shards]
    extra = [i for i in shards if i >= size]
    if missing or extra:
        raise AccessoryError(f"checkpoint directory {directory} is incomplete: shards {missing or extra} of "
                             f"{size} missing or unexpected")
    return CheckpointFiles(directory, kind, [shards[i] for i in range(size)])


def check_pretrained_type(ckpt: CheckpointFiles, pretrained_type: Optional[str]) -> None:
    """The --pretrained_type a user gave must match the files found."""
    if pretrained_type is not None and ckpt.kind != pretrained_type:
        raise AccessoryError(f"pretrained_type is {pretrained_type} but {ckpt.directory} holds {ckpt.kind} files "
                             f"({os.path.basename(ckpt.files[0])}...): pass --pretrained_type {ckpt.kind}")


def open_shard(path: str) -> Dict[str, torch.Tensor]:
    """A shard's tensors, memory-mapped (nothing is read until used) and with `weights_only=True`,
    so a checkpoint can never run code. Keys are our model's (`llma.` prefixed) in every layout."""
    try:
        content = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AccessoryError(f"checkpoint file {path} is truncated or corrupt ({reason}): re-download or re-save it") from None
    if not isinstance(content, dict):
        raise AccessoryError(f"checkpoint file {path} holds a {type(content).__name__}, not a state dict")
    if "model" in content and isinstance(content["model"], dict):
        return content["model"]
    return {MODEL_PREFIX + key: value for key, value in content.items()}


_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the pages under `tensor`, a view into a memory-mapped shard (`open_shard`), from this
    process's memory. Only for file-backed maps that are never written: a later read maps them back
    from the file (or the page cache), so widening the range to whole pages is harmless."""
    if _libc is None or tensor.numel() == 0:
        return
    span = tensor.untyped_storage()
    start = tensor.data_ptr()
    end = start + (tensor.stride(0) * tensor.shape[0] if tensor.dim() else 1) * tensor.element_size()
    begin = max(start, span.data_ptr()) // mmap.PAGESIZE * mmap.PAGESIZE
    length = min(end, span.data_ptr() + span.nbytes()) - begin
    if length > 0:
        _libc.madvise(ctypes.c_void_p(begin), ctypes.c_size_t(length), _MADV_DONTNEED)
