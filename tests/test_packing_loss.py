"""A packed batch gives the same loss as the same samples unpacked: attention stays within each
sample and positions restart, so packing changes speed, not the numbers."""
from __future__ import annotations

import torch

import accessory
from accessory.data import collate, pack_samples
from accessory.data.store import IGNORE_INDEX
from conftest import TINY_VOCAB, make_checkpoint


def _sample(length: int, generator: torch.Generator) -> dict:
    tokens = torch.randint(0, TINY_VOCAB, (length,), generator=generator)
    labels = tokens.clone()
    labels[: length // 2] = IGNORE_INDEX  # a masked prompt, a trained answer
    return {"tokens": tokens, "labels": labels}


def test_packed_loss_equals_unpacked_loss(tiny_dir, tmp_path):
    model = accessory.load(str(make_checkpoint(tiny_dir, tmp_path / "ckpt")))
    generator = torch.Generator().manual_seed(0)
    samples = [_sample(n, generator) for n in (17, 5, 30, 9, 12, 40)]
    unpacked = collate(samples)
    packed = collate([pack_samples(samples[:3]), pack_samples(samples[3:])])
    with torch.no_grad():
        loss_unpacked = model(unpacked["tokens"], unpacked["labels"])
        loss_packed = model(packed["tokens"], packed["labels"], packed["positions"], packed["segment_ids"])
    targets = int((unpacked["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert targets == int((packed["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert abs(loss_packed.item() - loss_unpacked.item()) / targets <= 1e-5
    assert abs(loss_packed.item() - loss_unpacked.item()) <= 1e-5 * abs(loss_unpacked.item())
