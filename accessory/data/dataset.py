"""Datasets over a TokenStore, and the batch layout the model gets.

A batch is a dict of LongTensors [B, T]: `tokens` (padded with 0) and `labels` (the token where trained,
else IGNORE_INDEX, padding included; the model shifts, so logits at t predict labels[t + 1]), and
`lengths` [B], the real (non-padding) tokens of each row. Packed
batches add `positions` (restarting at 0 in each sample) and `segment_ids` (1, 2, ... for the samples
of a row, 0 for padding): attention stays causal within equal segment ids, so a packed batch's loss
equals that of the same samples unpacked.
"""
from typing import Sequence

import torch
from torch.utils.data import Dataset

from accessory.data.store import IGNORE_INDEX, TokenStore

_PAD = {"tokens": 0, "labels": IGNORE_INDEX, "positions": 0, "segment_ids": 0}


class SampleDataset(Dataset):
    """Samples `ids` of a store (an id may repeat), each in group `groups[i]` (an index into group_names)."""

    def __init__(self, store: TokenStore, ids: torch.Tensor, groups: torch.Tensor, group_names: list[str]):
        self.store, self.ids, self.groups, self.group_names = store, ids, groups, group_names
        self.lengths = store.lengths[ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.store.sample(int(self.ids[index]))


class PackedDataset(Dataset):
    """Rows of store samples (each row's samples from one group), served packed."""

    def __init__(self, store: TokenStore, rows: list[list[int]], groups: torch.Tensor, group_names: list[str]):
        self.store, self.rows, self.groups, self.group_names = store, rows, groups, group_names
        sample_lengths = store.lengths
        self.lengths = torch.tensor([int(sample_lengths[row].sum()) for row in rows], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return pack_samples([self.store.sample(i) for i in self.rows[index]])


def pack_samples(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One packed row of unpacked samples. Each sample's first label is ignored: the logits before it
    belong to the previous sample, so nothing is predicted across a sample boundary."""
    labels = [sample["labels"].clone() for sample in samples]
    for sample_labels in labels:
        sample_labels[0] = IGNORE_INDEX
    return {"tokens": torch.cat([sample["tokens"] for sample in samples]),
            "labels": torch.cat(labels),
            "positions": torch.cat([torch.arange(len(sample["tokens"])) for sample in samples]),
            "segment_ids": torch.cat([torch.full((len(sample["tokens"]),), k)
                                      for k, sample in enumerate(samples, start=1)])}


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad to the longest sample (packed or not), with `lengths` [B] the real tokens of each row.
    No samples give [0, 0] tensors: a rank's empty validation batch."""
    width = max((len(sample["tokens"]) for sample in samples), default=0)
    keys = samples[0].keys() if samples else ("tokens", "labels")
    batch = {}
    for key in keys:
        padded = torch.full((len(samples), width), _PAD[key], dtype=torch.long)
        for row, sample in enumerate(samples):
            padded[row, :len(sample[key])] = sample[key]
        batch[key] = padded
    batch["lengths"] = torch.tensor([len(sample["tokens"]) for sample in samples], dtype=torch.long)
    return batch
