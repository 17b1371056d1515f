"""Training logs on global rank 0: metrics.jsonl (one object per optimizer step, plus one with
`val_loss` after each validated epoch), log.txt (one line per epoch), TensorBoard scalars when
tensorboard is installed, and a tqdm progress bar."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from tqdm import tqdm


class MetricsLogger:
    def __init__(self, output_dir: str, enabled: bool):
        self.enabled = enabled
        self.bar: Optional[tqdm] = None
        self.tensorboard = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.metrics = open(os.path.join(output_dir, "metrics.jsonl"), "a")
        self.log = open(os.path.join(output_dir, "log.txt"), "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(output_dir)
        except ImportError:  # tensorboard is optional
            pass

    def start_epoch(self, epoch: int, total_steps: int, done_steps: int) -> None:
        if self.enabled:
            self.bar = tqdm(total=total_steps, initial=done_steps, desc=f"epoch {epoch}", dynamic_ncols=True,
                            mininterval=1.0)

    def step(self, record: Dict[str, Any], show: bool) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])
        self.bar.update(1)
        if show:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)

    def end_epoch(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        if "val_loss" in record:  # beside the step records, at the step it was measured after
            self.metrics.write(json.dumps({"step": record["step"], "epoch": record["epoch"] + 1,
                                           "val_loss": record["val_loss"], "time": time.time()}) + "\n")
            self.metrics.flush()
        if self.tensorboard is not None and "val_loss" in record:
            self.tensorboard.add_scalar("val/loss", record["val_loss"], record["epoch"])
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.log.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
