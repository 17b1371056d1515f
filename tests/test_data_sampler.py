"""The distributed sampler, the resumable loader and the validation loader."""
import io
from itertools import islice

import pytest
import torch

from accessory.data import FinetuneData, ResumableLoader
from accessory.data.dataset import SampleDataset
from accessory.data.sampler import GlobalBatchSampler
from accessory.data.store import TokenStore
from accessory.errors import AccessoryError


class CountingDataset(SampleDataset):
    """Item k is k+1 repeated `lengths[k]` times (token 0 is padding in a batch); counts reads."""

    def __init__(self, lengths: list[int], groups: list[int]):
        store = TokenStore.from_samples([([k + 1] * n, [True] * n) for k, n in enumerate(lengths)])
        names = [f"g{g}" for g in sorted(set(groups))]
        super().__init__(store, torch.arange(len(lengths)), torch.tensor(groups), names)
        self.reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def items(batch: dict) -> list[int]:
    return [int(row[0]) - 1 for row in batch["tokens"]]


GROUPS = [0] * 50 + [1] * 37 + [2] * 13
LENGTHS = [1 + (7 * k) % 23 for k in range(len(GROUPS))]


def sampler(dp_rank=0, dp_world=3, **kwargs) -> GlobalBatchSampler:
    kwargs = {"batch_size": 2, "accum_iter": 2, "seed": 0, **kwargs}
    return GlobalBatchSampler(torch.tensor(GROUPS), torch.tensor(LENGTHS), dp_rank=dp_rank, dp_world=dp_world,
                              **kwargs)


def test_plan_is_a_function_of_seed_and_epoch():
    assert torch.equal(sampler().plan(3), sampler(dp_rank=2).plan(3))
    assert not torch.equal(sampler().plan(3), sampler().plan(4))
    assert not torch.equal(sampler().plan(3), sampler(seed=1).plan(3))


@pytest.mark.parametrize("length_grouped", [False, True])
def test_shards_are_disjoint_and_a_global_batch_comes_from_one_group(length_grouped):
    ranks = [sampler(rank, length_grouped=length_grouped) for rank in range(3)]
    for s in ranks:
        s.set_epoch(5)
    micro_batches = [list(s) for s in ranks]
    assert {len(m) for m in micro_batches} == {len(ranks[0])} and len(ranks[0]) == 8 * 2  # 48/12 + 36/12 + 12/12
    seen = []
    for step in range(0, len(ranks[0]), 2):  # accum_iter micro-batches per rank make one global batch
        global_batch = [i for m in micro_batches for batch in m[step:step + 2] for i in batch]
        assert len(global_batch) == 12 and len({GROUPS[i] for i in global_batch}) == 1
        seen += global_batch
    assert len(seen) == len(set(seen)) == 96 and ranks[0].dropped == 100 - 96


def test_dropped_samples_vary_by_epoch_and_are_not_the_longest():
    s = sampler(length_grouped=True)
    dropped = [frozenset(range(100)) - frozenset(s.plan(epoch).flatten().tolist()) for epoch in range(6)]
    assert all(len(d) == s.dropped == 4 for d in dropped) and len(set(dropped)) > 1
    longest = set(sorted(range(100), key=LENGTHS.__getitem__)[-4:])
    assert any(d != longest for d in dropped)


def test_length_grouping_gives_global_batches_of_similar_length():
    plan = sampler(length_grouped=True).plan(0)
    for group in range(2):
        spans = sorted((min(LENGTHS[i] for i in row), max(LENGTHS[i] for i in row))
                       for row in plan.tolist() if GROUPS[row[0]] == group)
        assert all(low_next >= high for (_, high), (low_next, _) in zip(spans, spans[1:]))


def loader(dp_rank=0, **kwargs) -> ResumableLoader:
    dataset = CountingDataset(LENGTHS, GROUPS)
    return FinetuneData(dataset, None, seed=7, **kwargs).train_loader(batch_size=2, accum_iter=2, dp_rank=dp_rank,
                                                                      dp_world=3)


def test_resume_mid_epoch_continues_with_exactly_the_remaining_batches():
    first = loader(dp_rank=1)
    first.set_epoch(2)
    consumed = [items(b) for b in islice(first, 5)]
    state = first.state_dict()
    assert state == {**state, "epoch": 2, "step": 5} and all(type(v) is int for v in state.values())
    remaining = [items(b) for b in first]
    assert len(consumed) + len(remaining) == len(first)

    resumed = loader(dp_rank=1)
    resumed.load_state_dict(saved_and_loaded(state))
    assert [items(b) for b in resumed] == remaining
    assert resumed._loader.dataset.reads == 2 * len(remaining)  # the skipped batches were never read

    restarted = loader(dp_rank=1)
    restarted.set_epoch(2, start_step=5)
    assert [items(b) for b in restarted] == remaining


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_refuses_a_different_batch_layout():
    state = loader().state_dict()
    other = FinetuneData(CountingDataset(LENGTHS, GROUPS), None, seed=7).train_loader(2, 2, 0, dp_world=2)
    with pytest.raises(AccessoryError, match="dp_world 3 -> 2"):
        other.load_state_dict(state)


def test_loader_with_workers_matches_in_process():
    in_process, with_workers = loader(), FinetuneData(CountingDataset(LENGTHS, GROUPS), None, seed=7).train_loader(
        2, 2, 0, 3, num_workers=1)
    assert [items(b) for b in in_process] == [items(b) for b in with_workers]


def test_too_little_data_for_one_global_batch():
    with pytest.raises(AccessoryError, match="no complete global batch: one takes 120 samples"):
        sampler(batch_size=10, accum_iter=4)


@pytest.mark.parametrize("n, batch_size, dp_world", [(10, 4, 3), (7, 1, 4), (2, 3, 4)])
def test_val_loader_reads_every_sample_once(n, batch_size, dp_world):
    dataset = CountingDataset([1 + k % 5 for k in range(n)], [0] * n)
    data = FinetuneData(dataset, dataset)
    per_rank = [[batch for batch in data.val_loader(batch_size, rank, dp_world)] for rank in range(dp_world)]
    assert len({len(batches) for batches in per_rank}) == 1  # every rank takes part in every step
    seen = [i for batches in per_rank for batch in batches for i in items(batch)]
    assert sorted(seen) == list(range(n))
    assert all(batch["tokens"].shape[0] <= batch_size for batches in per_rank for batch in batches)


def test_a_rank_short_of_val_samples_gets_an_empty_final_batch():
    dataset = CountingDataset([3] * 7, [0] * 7)
    batches = list(FinetuneData(dataset, dataset).val_loader(batch_size=1, dp_rank=3, dp_world=4))
    assert [tuple(batch["tokens"].shape) for batch in batches] == [(1, 3), (0, 0)]
