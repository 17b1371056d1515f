"""main_finetune with an error raised on rank 1 only, at its third optimizer step, while rank 0
goes on into the next collective: the whole job must end promptly."""
import os

import torch.distributed as dist

from accessory import main_finetune
from accessory.distributed.errors import run_entrypoint
from accessory.train.loop import Trainer

original_step = Trainer._step


def failing_step(self, micro_batches, steps_per_epoch):
    if dist.get_rank() == 1 and self.global_step == 2:
        raise RuntimeError("injected failure on rank 1")
    return original_step(self, micro_batches, steps_per_epoch)


Trainer._step = failing_step

if __name__ == "__main__":
    os.environ.setdefault("ACCESSORY_COLLECTIVE_TIMEOUT_MIN", "30")  # prove it is not the timeout that ends it
    run_entrypoint(main_finetune.main)
