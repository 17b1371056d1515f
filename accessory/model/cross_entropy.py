"""The output projection and the token cross-entropy in one pass over chunks of tokens, with the
vocabulary split over the model-parallel group as the output layer's weight is.

The full [tokens, vocabulary] logits are never held: each chunk's logits live only while the
chunk's loss and gradients are taken. The gradients are computed during the forward (the loss is
the graph's last operation, so its only upstream gradient is a scalar) and the backward just
scales them, which spends no extra matmul on recomputing logits and skips the separate
log-softmax backward and the zero-filled gradient of the logits that `F.cross_entropy` needs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 2**25  # logits per chunk (128 MB in fp32): few chunks, as each adds a pass over the weight's gradient


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """The SUM over tokens with target != -100 of cross_entropy(hidden @ weight.T, target), in fp32.

    hidden [..., dim] is the same on every rank of `group`; weight [vocab / ranks, dim] is this
    rank's contiguous slice of the vocabulary (rank r holds rows r·V/ranks onwards). Under autocast
    the matmuls run in the autocast dtype and the softmax in fp32, as with the plain path."""
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                         dtype, group, needs_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                group: Optional[dist.ProcessGroup], needs_grad: bool) -> torch.Tensor:
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        w, vocab_start = weight.to(dtype), _rank(group) * weight.shape[0]
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if needs_grad else None
        grad_weight: Optional[torch.Tensor] = None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = max(1, CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            h = hidden[start:start + step].to(dtype)
            chunk_loss, grad_logits = _chunk(h, w, targets[start:start + step], vocab_start, group, needs_grad)
            loss += chunk_loss
            if grad_logits is not None:
                grad_logits = grad_logits.to(dtype)
                grad_hidden[start:start + step] = grad_logits @ w
                if ctx.needs_input_grad[1]:
                    grad_weight = _accumulate(grad_weight, grad_logits.t(), h)
        if grad_hidden is not None:
            _all_reduce(grad_hidden, group)  # each rank saw only its slice of the vocabulary
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        # scaled in place, so no second weight-sized buffer appears; a second backward through the
        # same graph is refused by autograd's saved-tensor version check instead of reading them twice
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_loss = grad_loss.float()
        grad_hidden = grad_hidden.mul_(grad_loss).to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None, None


def _chunk(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_start: int,
           group: Optional[dist.ProcessGroup], needs_grad: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The loss sum of one chunk of tokens and, if asked, d(loss)/d(logits) = softmax - one_hot(target),
    zero on ignored tokens, for this rank's slice of the vocabulary. Masks instead of boolean
    indexing, so that nothing waits on the device (no host sync)."""
    logits = (hidden @ weight.t()).float()
    valid = targets != IGNORE_INDEX
    local = targets - vocab_start
    owned = valid & (local >= 0) & (local < logits.shape[1])  # the target is in this rank's slice
    index = torch.where(owned, local, 0)[:, None]
    target_logit = logits.gather(1, index).squeeze(1) * owned
    row_max = logits.amax(dim=1)
    _all_reduce(row_max, group, dist.ReduceOp.MAX)
    probs = logits.sub_(row_max[:, None]).exp_()  # in place: the softmax's numerators, one buffer per chunk
    sum_exp = probs.sum(dim=1)
    _all_reduce(sum_exp, group)
    _all_reduce(target_logit, group)
    loss = torch.where(valid, row_max + sum_exp.log() - target_logit, 0.0).sum()
    if not needs_grad:
        return loss, None
    probs.mul_((valid / sum_exp)[:, None])  # the softmax, and zero rows for ignored tokens, in one pass
    return loss, probs.scatter_add_(1, index, -owned[:, None].to(probs.dtype))


def _accumulate(total: Optional[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """total + a @ b in fp32; the first chunk's product is the total, and fp32 operands add in the matmul."""
    if total is None:
        return (a @ b).float()
    if a.dtype == total.dtype:
        return total.addmm_(a, b)
    return total.add_(a @ b)


def _all_reduce(t: torch.Tensor, group: Optional[dist.ProcessGroup], op=dist.ReduceOp.SUM) -> None:
    if group is not None:
        dist.all_reduce(t, op=op, group=group)


def _rank(group: Optional[dist.ProcessGroup]) -> int:
    return 0 if group is None else dist.get_rank(group)
