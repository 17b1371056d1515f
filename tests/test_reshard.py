"""Resharding: a checkpoint written at one MP size loads at another with identical logits,
online (accessory.load under torchrun) and offline (tools/reshard.py)."""
from __future__ import annotations

import pytest
import torch

import accessory
from conftest import TINY_VOCAB, make_checkpoint
from helpers import run_python, torchrun


@pytest.fixture(scope="module")
def case(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    ckpts = {mp: make_checkpoint(tiny_dir, root / f"mp{mp}", "meta_ori" if mp == 2 else "consolidated", mp)
             for mp in (1, 2, 4)}
    tokens = torch.randint(0, TINY_VOCAB, (2, 23), generator=torch.Generator().manual_seed(2))
    torch.save(tokens, root / "tokens.pt")
    with torch.no_grad():
        reference = accessory.load(str(ckpts[1])).llma(tokens)
    return root, ckpts, tokens, reference


def _dump(root, nproc, checkpoints):
    out = root / f"logits_{nproc}.pt"
    torchrun(nproc, ["tests/scripts/dump_logits.py", out, root / "tokens.pt", *checkpoints])
    return torch.load(out, weights_only=True)


def test_2_to_1(case):
    root, ckpts, tokens, reference = case
    with torch.no_grad():
        assert torch.equal(accessory.load(str(ckpts[2])).llma(tokens), reference)


@pytest.mark.slow
def test_1_to_2_and_4_to_2(case):
    root, ckpts, _, reference = case
    for logits in _dump(root, 2, [ckpts[1], ckpts[4]]).values():
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_2_to_4(case):
    root, ckpts, _, reference = case
    torch.testing.assert_close(_dump(root, 4, [ckpts[2]])[str(ckpts[2])], reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_2_to_3_non_divisible(case):
    root, ckpts, _, reference = case
    torch.testing.assert_close(_dump(root, 3, [ckpts[2]])[str(ckpts[2])], reference, rtol=0, atol=1e-6)


def test_offline_reshard_round_trip(case, tmp_path):
    root, ckpts, tokens, reference = case
    run_python(["tools/reshard.py", "--src", ckpts[2], "--dst", tmp_path / "mp3", "--model_parallel_size", 3,
                "--format", "consolidated"])
    run_python(["tools/reshard.py", "--src", tmp_path / "mp3", "--dst", tmp_path / "mp1", "--model_parallel_size", 1])
    assert sorted(p.name for p in (tmp_path / "mp3").glob("*.pth")) == [f"consolidated.0{i}-of-03.model.pth" for i in range(3)]
    with torch.no_grad():
        assert torch.equal(accessory.load(str(tmp_path / "mp1")).llma(tokens), reference)
