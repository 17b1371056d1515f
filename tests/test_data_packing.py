"""Packing samples into rows, and the batch layout of packed and unpacked samples."""
import random

import pytest
import torch

from accessory.data import IGNORE_INDEX, collate, pack_samples
from accessory.data.packing import best_fit_decreasing


def sample(tokens: list[int], trained_from: int) -> dict[str, torch.Tensor]:
    tokens = torch.tensor(tokens)
    labels = tokens.clone()
    labels[:trained_from] = IGNORE_INDEX
    return {"tokens": tokens, "labels": labels}


def test_best_fit_decreasing_places_every_item_once_within_capacity():
    draw = random.Random(0)
    lengths = [draw.randint(1, 100) for _ in range(500)]
    rows = best_fit_decreasing(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= 1.1 * sum(lengths) / 128 + 1  # close to the lower bound
    assert rows == best_fit_decreasing(lengths, 128)
    with pytest.raises(ValueError):
        best_fit_decreasing([3, 129], 128)


def test_pack_samples_restarts_positions_and_numbers_segments():
    samples = [sample([1, 5, 6, 2], 2), sample([1, 7, 2], 1), sample([1, 8], 0)]
    row = pack_samples(samples)
    assert row["tokens"].tolist() == [1, 5, 6, 2, 1, 7, 2, 1, 8]
    assert row["positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    assert row["segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 3, 3]
    # Each sample's first label is ignored, so no token is predicted from the previous sample.
    assert row["labels"].tolist() == [-100, -100, 6, 2, -100, 7, 2, -100, 8]
    assert samples[2]["labels"][0] == 1  # the samples themselves are left as they were


def test_collate_pads_to_the_longest_sample():
    batch = collate([sample([1, 5, 6, 2], 1), sample([0, 2], 1)])
    assert set(batch) == {"tokens", "labels", "lengths"}
    assert batch["lengths"].tolist() == [4, 2]
    assert batch["tokens"].tolist() == [[1, 5, 6, 2], [0, 2, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6, 2], [-100, 2, -100, -100]]  # token 0 is real; its padding is not
    assert batch["tokens"].dtype == batch["labels"].dtype == torch.long


def test_packed_and_unpacked_batches_of_the_same_samples():
    samples = [sample([1, 5, 6, 2], 1), sample([1, 7, 8, 9, 2], 3), sample([1, 4, 2], 1)]
    unpacked = collate(samples)
    packed = collate([pack_samples(samples[:2]), pack_samples(samples[2:])])
    assert set(packed) == {"tokens", "labels", "positions", "segment_ids", "lengths"}
    assert packed["tokens"].shape == (2, 9) and packed["lengths"].tolist() == [9, 3]
    assert packed["segment_ids"].tolist() == [[1] * 4 + [2] * 5, [1] * 3 + [0] * 6]
    for row, segment, k in [(0, 1, 0), (0, 2, 1), (1, 1, 2)]:
        in_segment = packed["segment_ids"][row] == segment
        length = int(in_segment.sum())
        assert torch.equal(packed["tokens"][row][in_segment], unpacked["tokens"][k, :length])
        assert torch.equal(packed["positions"][row][in_segment], torch.arange(length))
        assert torch.equal(packed["labels"][row][in_segment], unpacked["labels"][k, :length])
    assert packed["labels"][1, 3:].eq(IGNORE_INDEX).all() and packed["positions"][1, 3:].eq(0).all()


def test_empty_batch():
    batch = collate([])
    assert batch["tokens"].shape == batch["labels"].shape == (0, 0)
