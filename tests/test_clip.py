"""Global-norm clipping in one process: the norm of all gradients, scaled down only above max_norm,
left alone below it and when the norm is not finite."""
from __future__ import annotations

import pytest
import torch

import accessory
from accessory.distributed.parallel import clip_grad_norm
from conftest import TINY_VOCAB, make_checkpoint


@pytest.fixture(scope="module")
def model(tiny_dir, tmp_path_factory):
    model = accessory.load(str(make_checkpoint(tiny_dir, tmp_path_factory.mktemp("clip") / "ckpt"))).train()
    tokens = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    model(tokens, tokens).backward()
    return model


def grads(model) -> list:
    return [p.grad.clone() for p in model.parameters()]


def global_norm(gs: list) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in gs])))


def test_below_max_norm_is_untouched_and_above_is_scaled(model):
    before = grads(model)
    norm = global_norm(before)
    total = clip_grad_norm(model, max_norm=2 * norm)
    assert total.dim() == 0 and float(total) == pytest.approx(norm, rel=1e-6)  # per-tensor norms in fp32
    assert all(torch.equal(a, b) for a, b in zip(before, grads(model)))
    clip_grad_norm(model, max_norm=norm / 4)
    assert global_norm(grads(model)) == pytest.approx(norm / 4, rel=1e-5)
    for p, g in zip(model.parameters(), before):
        p.grad.copy_(g)


def test_non_finite_norm_leaves_gradients_alone(model):
    before = grads(model)
    first = next(model.parameters())
    first.grad[0, 0] = float("inf")
    assert not torch.isfinite(clip_grad_norm(model, max_norm=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(before[1:], grads(model)[1:]))
    first.grad.copy_(before[0])
