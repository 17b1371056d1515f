"""Seeded random generators for the data pipeline."""
import hashlib

import torch


def rng(*keys: object) -> torch.Generator:
    """A generator seeded from `keys`, e.g. `rng(seed, "epoch", 3)`.

    Every random choice (subsampling, validation split, epoch order) draws from its own generator named
    by its keys, so it is a pure function of them: all ranks agree without communicating, reruns agree,
    and one choice never shifts another. Keys are ints and strs, whose repr is stable.
    """
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
