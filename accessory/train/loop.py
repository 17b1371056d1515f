"""The training loop: token-weighted loss over the whole accumulation group and data-parallel
ranks, gradient accumulation without sync, global-norm clipping, the LR schedule per optimizer
step, metrics, periodic atomic checkpoints and an exact resume position."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from accessory.checkpoint.train_state import save_checkpoint
from accessory.distributed import groups
from accessory.distributed.parallel import clip_grad_norm, gradient_sync
from accessory.errors import AccessoryError
from accessory.model.meta import IGNORE_INDEX
from accessory.train.metrics import MetricsLogger
from accessory.train.optim import learning_rate, set_learning_rate

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_INPUTS = ("tokens", "labels", "positions", "segment_ids")


class Trainer:
    def __init__(self, args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: Optional[Any], loader, val_loader: Optional[Iterable], metrics: MetricsLogger):
        self.args, self.model, self.optimizer, self.scaler = args, model, optimizer, scaler
        self.loader, self.val_loader, self.metrics = loader, val_loader, metrics
        self.device = groups.device()
        self.epoch, self.micro_done, self.global_step = 0, 0, 0

    def restore_position(self, state: Dict[str, Any]) -> None:
        self.epoch, self.micro_done, self.global_step = state["epoch"], state["micro_done"], state["global_step"]

    def fit(self) -> None:
        args = self.args
        while self.epoch < args.epochs:
            steps = len(self.loader) // args.accum_iter
            if steps == 0:
                raise AccessoryError(f"the data gives no full optimizer step per epoch: lower --batch_size "
                                     f"({args.batch_size}) or --accum_iter ({args.accum_iter}), or add data")
            self.loader.set_epoch(self.epoch, self.micro_done)
            self.metrics.start_epoch(self.epoch, steps, self.micro_done // args.accum_iter)
            losses = []
            for micro_batches in _chunks(iter(self.loader), args.accum_iter):
                losses.append(self._step(micro_batches, steps))
                if args.max_steps is not None and self.global_step >= args.max_steps:
                    self._save(f"epoch{self.epoch}-iter{self.micro_done}")
                    return
                if self._iteration_save_due(len(micro_batches)):
                    self._save(f"epoch{self.epoch}-iter{self.micro_done}")
            self._end_epoch(losses)

    def _step(self, micro_batches: List[Dict[str, torch.Tensor]], steps_per_epoch: int) -> float:
        args, start = self.args, time.perf_counter()
        lr = learning_rate(self.epoch + self.micro_done / len(self.loader), args.lr, args.min_lr,
                           args.warmup_epochs, args.epochs)
        set_learning_rate(self.optimizer, lr)
        counts = torch.tensor([[_targets(b), _real_tokens(b)] for b in micro_batches], dtype=torch.float64).sum(0)
        counts = self._dp_sum(counts.to(self.device))
        # every token weighs 1/targets of the step; gradients are averaged over DP ranks, hence dp_world.
        # Kept on the device: the host waits on the device only once per step, for the logged record
        targets = counts[0].clamp(min=1)
        loss_scale = (groups.dp_world() / targets).float()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro_batches):
            inputs = {k: batch[k].to(self.device, non_blocking=True) for k in MODEL_INPUTS if k in batch}
            with gradient_sync(self.model, i == len(micro_batches) - 1), self._autocast():
                micro_loss = self.model(**inputs)
            scaled = micro_loss * loss_scale
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += micro_loss.detach()
        grad_norm = self._optimizer_step()
        loss = (self._dp_sum(loss_sum) / targets).item()
        if not math.isfinite(loss):  # the run stops here: nothing after this step is saved
            raise AccessoryError(f"the loss is {loss} at step {self.global_step + 1} (epoch {self.epoch}): "
                                 f"lower --lr, check the data, or use --precision bf16/fp32 instead of fp16")
        self.global_step += 1
        self.micro_done += len(micro_batches)
        tokens = counts[1].item()
        elapsed = time.perf_counter() - start
        record = {"step": self.global_step, "epoch": self.epoch + self.micro_done / len(self.loader), "loss": loss,
                  "lr": lr, "grad_norm": grad_norm.item(), "tokens": int(tokens),
                  "tokens_per_s": tokens / elapsed, "time": time.time()}
        self.metrics.step(record, show=self.global_step % self.args.log_interval == 0)
        return loss

    def _optimizer_step(self) -> torch.Tensor:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.model, self.args.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _end_epoch(self, losses: List[float]) -> None:
        record: Dict[str, Any] = {"epoch": self.epoch, "train_loss": sum(losses) / max(len(losses), 1),
                                  "train_lr": self.optimizer.param_groups[0]["lr"], "step": self.global_step}
        if self.val_loader is not None:
            record["val_loss"] = self.evaluate()
        self.metrics.end_epoch(record)
        self.epoch, self.micro_done = self.epoch + 1, 0
        if self.epoch % self.args.save_interval == 0 or self.epoch == self.args.epochs:
            self._save(f"epoch{self.epoch - 1}")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy per target token over the whole validation set, all DP ranks."""
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in self.val_loader:
            inputs = {k: batch[k].to(self.device) for k in MODEL_INPUTS if k in batch}
            if inputs["tokens"].shape[0] == 0:  # keep every rank in step through FSDP's collectives
                inputs = {"tokens": torch.zeros(1, 2, dtype=torch.long, device=self.device),
                          "labels": torch.full((1, 2), IGNORE_INDEX, device=self.device)}
            with self._autocast():
                totals[0] += self.model(**inputs).double()
            totals[1] += _targets(inputs)
        self.model.train()
        totals = self._dp_sum(totals)
        return (totals[0] / totals[1].clamp(min=1)).item()

    def _save(self, name: str) -> None:
        train_state = {"epoch": self.epoch, "micro_done": self.micro_done, "global_step": self.global_step,
                       "loader": self.loader.state_dict()}
        save_checkpoint(self.args.output_dir, name, self.model, self.optimizer, self.scaler, train_state,
                        self.args.only_save_trainable, self.args.keep_last)

    def _iteration_save_due(self, just_done: int) -> bool:
        interval = self.args.save_iteration_interval
        return interval > 0 and self.micro_done // interval > (self.micro_done - just_done) // interval

    def _autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.args.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _dp_sum(self, t: torch.Tensor) -> torch.Tensor:
        if groups.dp_world() > 1:
            dist.all_reduce(t, group=groups.dp_group())
        return t


def _targets(batch: Dict[str, torch.Tensor]) -> int:
    """Tokens that are predicted: labels shifted by one, -100 excluded."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _real_tokens(batch: Dict[str, torch.Tensor]) -> int:
    """Non-padding tokens."""
    return int(batch["lengths"].sum())


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    """Consecutive groups of `size` items; a short final group is dropped (no partial step)."""
    while True:
        chunk = list(itertools.islice(iterator, size))
        if len(chunk) < size:
            return
        yield chunk
