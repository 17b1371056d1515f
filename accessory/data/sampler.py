"""Which items each data-parallel rank gets, micro-batch by micro-batch."""
import math

import torch
from torch.utils.data import Sampler

from accessory.data.seeding import rng
from accessory.errors import AccessoryError


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches of one epoch; a batch sampler for torch's DataLoader.

    A global batch (batch_size x accum_iter x dp_world items, one optimizer step) comes from one group.
    Each epoch, every group is shuffled and cut to whole global batches (the rest, `dropped`, is a
    different random part each epoch), optionally sorted by length so that batches need little padding,
    and the global batches of all groups are shuffled together. The plan is a function of (seed, epoch)
    alone, so any micro-step of any epoch can be started from directly.
    """

    def __init__(self, groups: torch.Tensor, lengths: torch.Tensor, *, batch_size: int, accum_iter: int,
                 dp_rank: int, dp_world: int, seed: int = 0, length_grouped: bool = False):
        if min(batch_size, accum_iter, dp_world) < 1 or not 0 <= dp_rank < dp_world:
            raise ValueError(f"bad batch layout: batch_size={batch_size}, accum_iter={accum_iter}, "
                             f"dp_rank={dp_rank}, dp_world={dp_world}")
        self.batch_size, self.accum_iter, self.dp_rank, self.dp_world = batch_size, accum_iter, dp_rank, dp_world
        self.seed, self.length_grouped, self.lengths = seed, length_grouped, lengths
        self.global_batch = batch_size * accum_iter * dp_world
        self._members = [torch.nonzero(groups == g).flatten() for g in groups.unique()]
        self.num_global_batches = sum(len(m) // self.global_batch for m in self._members)
        if self.num_global_batches == 0:
            raise AccessoryError(
                f"no complete global batch: one takes {self.global_batch} samples from a single group (batch_size "
                f"{batch_size} x accum_iter {accum_iter} x dp_world {dp_world}) but the largest group has "
                f"{max(len(m) for m in self._members)}; lower batch_size or accum_iter, or add data")
        self.dropped = len(groups) - self.num_global_batches * self.global_batch
        self.epoch = self.start_step = 0

    def __len__(self) -> int:
        return self.num_global_batches * self.accum_iter

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step {start_step} is outside this epoch's {len(self)} micro-batches")
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        plan = self.plan(self.epoch)
        for step in range(self.start_step, len(self)):
            batch, micro = divmod(step, self.accum_iter)
            first = (micro * self.dp_world + self.dp_rank) * self.batch_size
            yield plan[batch, first:first + self.batch_size].tolist()

    def plan(self, epoch: int) -> torch.Tensor:
        """All ranks' items of an epoch, one row per global batch."""
        generator = rng(self.seed, "epoch", epoch)
        batches = []
        for members in self._members:
            kept = members[torch.randperm(len(members), generator=generator)]
            kept = kept[:len(kept) // self.global_batch * self.global_batch]
            if self.length_grouped:
                kept = kept[torch.argsort(self.lengths[kept], descending=True, stable=True)]
            batches.append(kept.view(-1, self.global_batch))
        plan = torch.cat(batches)
        return plan[torch.randperm(len(plan), generator=generator)]

    def config(self) -> dict[str, int]:
        """What a resumed run must share for a step number to mean the same items."""
        return {"seed": self.seed, "batch_size": self.batch_size, "accum_iter": self.accum_iter,
                "dp_world": self.dp_world, "num_items": sum(len(m) for m in self._members),
                "length_grouped": int(self.length_grouped)}


def val_batches(lengths: torch.Tensor, batch_size: int, dp_rank: int, dp_world: int) -> list[list[int]]:
    """This rank's validation batches: every item exactly once over all ranks, none dropped.

    Ranks take turns over the items sorted by length (little padding) and all get the same number of
    batches, so collective calls stay matched; a rank's last batch may be short or empty.
    """
    order = torch.argsort(lengths, stable=True)
    mine = order[dp_rank::dp_world].tolist()
    num_batches = math.ceil(math.ceil(len(order) / dp_world) / batch_size)
    return [mine[k * batch_size:(k + 1) * batch_size] for k in range(num_batches)]
