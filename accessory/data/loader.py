"""The training loader, which can stop and resume at any micro-step."""
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from accessory.data.dataset import collate
from accessory.data.sampler import GlobalBatchSampler
from accessory.errors import AccessoryError


class ResumableLoader:
    """Collated micro-batches of this rank, from the epoch and step set by `set_epoch` or `load_state_dict`.

    Call `set_epoch(epoch)` before each epoch. To resume, either `load_state_dict(saved)` or
    `set_epoch(epoch, start_step)`; the next iteration then starts at that micro-step without reading
    the batches before it.
    """

    def __init__(self, dataset: Dataset, sampler: GlobalBatchSampler, *, num_workers: int = 0,
                 pin_memory: bool = False):
        self.sampler = sampler
        self._loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                  pin_memory=pin_memory)
        self.epoch = self.step = 0  # step: micro-batches of this epoch handed out so far

    @property
    def dropped(self) -> int:
        """Items left out of each epoch to keep global batches whole."""
        return self.sampler.dropped

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)
        self.epoch, self.step = epoch, start_step

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.set_epoch(self.epoch, self.step)  # an interrupted iteration continues where it stopped
        for batch in self._loader:
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, **self.sampler.config()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        expected = self.sampler.config()
        changed = [f"{key} {state.get(key)} -> {value}" for key, value in expected.items() if state.get(key) != value]
        if changed:
            raise AccessoryError(f"cannot resume the data loader: {', '.join(changed)} since the checkpoint; "
                                 "resume with the same data, seed, batch_size, accum_iter and data-parallel size")
        self.set_epoch(state["epoch"], state["step"])
