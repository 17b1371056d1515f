"""AdamW over the trainable parameters and LLaMA2-Accessory's learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, fused: bool = True) -> torch.optim.AdamW:
    """Fused AdamW (betas 0.9/0.95) over trainable parameters; norms and biases (1-D) get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel (CUDA and CPU) is many times faster than the per-parameter loop; foreach otherwise
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused or None, foreach=None if fused else True)


def learning_rate(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """Linear warmup over `warmup_epochs`, then a half-cosine from `lr` down to `min_lr` at `epochs`;
    `epoch` is fractional (epoch + fraction of the epoch done)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
