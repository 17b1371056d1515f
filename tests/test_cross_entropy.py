"""The fused output-projection + cross-entropy against the plain `F.cross_entropy(hidden @ W.T)`:
loss and both gradients, in chunks, with ignored targets, under autocast, without gradients, and
with the vocabulary split over a real 2-process gloo group."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from accessory.model import cross_entropy
from accessory.model.cross_entropy import IGNORE_INDEX, linear_cross_entropy_sum
from helpers import torchrun

TOKENS, DIM, VOCAB = 37, 16, 96


def make_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    targets[::5] = IGNORE_INDEX
    return {"hidden": torch.randn(TOKENS, DIM, generator=g), "weight": torch.randn(VOCAB, DIM, generator=g) * 0.5,
            "targets": targets}


def reference(inputs: dict, scale: float = 1.0, autocast: bool = False):
    hidden, weight = inputs["hidden"].clone().requires_grad_(), inputs["weight"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = hidden @ weight.t()
    loss = F.cross_entropy(logits.float(), inputs["targets"], ignore_index=IGNORE_INDEX, reduction="sum")
    (loss * scale).backward()
    return loss.detach(), hidden.grad, weight.grad


def fused(inputs: dict, scale: float = 1.0, autocast: bool = False):
    hidden, weight = inputs["hidden"].clone().requires_grad_(), inputs["weight"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = linear_cross_entropy_sum(hidden, weight, inputs["targets"])
    (loss * scale).backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_tokens", [TOKENS, 8, 1])
def test_matches_plain_cross_entropy_in_fp32(monkeypatch, chunk_tokens):
    monkeypatch.setattr(cross_entropy, "CHUNK_ELEMENTS", chunk_tokens * VOCAB)
    inputs = make_inputs()
    for got, want in zip(fused(inputs, scale=0.25), reference(inputs, scale=0.25)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_matches_plain_cross_entropy_under_bf16_autocast(monkeypatch):
    monkeypatch.setattr(cross_entropy, "CHUNK_ELEMENTS", 8 * VOCAB)
    inputs = make_inputs(1)
    got, want = fused(inputs, autocast=True), reference(inputs, autocast=True)
    assert got[1].dtype == got[2].dtype == torch.float32  # gradients in the parameters' dtype
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-3)
    for g, w in zip(got[1:], want[1:]):  # bf16 matmuls: the same error either way, not the same bits
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


def test_without_gradients_gives_the_loss_only():
    inputs = make_inputs(2)
    with torch.no_grad():
        loss = linear_cross_entropy_sum(inputs["hidden"], inputs["weight"], inputs["targets"])
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(inputs)[0], rtol=1e-5, atol=1e-6)


def test_frozen_weight_gets_no_gradient():
    inputs = make_inputs(3)
    hidden = inputs["hidden"].clone().requires_grad_()
    linear_cross_entropy_sum(hidden, inputs["weight"], inputs["targets"]).backward()
    torch.testing.assert_close(hidden.grad, reference(inputs)[1], rtol=1e-5, atol=1e-6)


def test_vocabulary_split_over_two_processes(tmp_path):
    inputs = make_inputs(4)
    torch.save(inputs, tmp_path / "inputs.pt")
    torchrun(2, ["tests/scripts/vocab_parallel_loss.py", tmp_path / "inputs.pt", tmp_path, 8 * VOCAB // 2])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    loss, grad_hidden, grad_weight = reference(inputs, scale=0.5)
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["grad_hidden"], grad_hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["grad_weight"] for r in ranks]), grad_weight, rtol=1e-5, atol=1e-6)
