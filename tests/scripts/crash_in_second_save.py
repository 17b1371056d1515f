"""main_finetune that dies (os._exit, as a SIGKILL would) in the middle of writing its second
checkpoint, after the model shard of it is written and before the checkpoint is complete."""
import os

from accessory import main_finetune
from accessory.checkpoint import train_state
from accessory.distributed.errors import run_entrypoint

saves = []
original_save_shard = train_state.save_shard


def crashing_save_shard(*args, **kwargs):
    path = original_save_shard(*args, **kwargs)
    saves.append(path)
    if len(saves) == 2:
        os._exit(9)
    return path


train_state.save_shard = crashing_save_shard

if __name__ == "__main__":
    run_entrypoint(main_finetune.main)
