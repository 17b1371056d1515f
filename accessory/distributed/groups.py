"""Process groups: torch.distributed from torchrun's or SLURM's environment (or a single process),
and fairscale's model-parallel groups; the data-parallel group is what remains."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
from datetime import timedelta

import torch
import torch.distributed as dist
from fairscale.nn.model_parallel import initialize as fs_init

from accessory.errors import AccessoryError

# A collective that waits longer than this has lost a peer: fail instead of hanging forever.
COLLECTIVE_TIMEOUT = timedelta(minutes=int(os.environ.get("ACCESSORY_COLLECTIVE_TIMEOUT_MIN", "30")))


def _env_from_slurm() -> None:
    """Under `srun` without torchrun, derive torchrun's variables from SLURM's."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        os.environ["MASTER_ADDR"] = nodes[0]
    os.environ.setdefault("MASTER_PORT", "29500")


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_process_group() -> None:
    """Join the job's process group once: NCCL on CUDA, gloo on CPU."""
    if dist.is_initialized():
        return
    _env_from_slurm()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    else:  # a plain `python ...`: a group of one, no port needed
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=COLLECTIVE_TIMEOUT)


def init_model_parallel(model_parallel_size: int) -> None:
    """Process group plus fairscale's model-parallel groups of this size (re-made if the size changes)."""
    init_process_group()
    world = dist.get_world_size()
    if world % model_parallel_size:
        raise AccessoryError(f"model_parallel_size={model_parallel_size} does not divide the {world} processes: "
                             f"launch a multiple of {model_parallel_size} processes")
    if fs_init.model_parallel_is_initialized():
        if fs_init.get_model_parallel_world_size() == model_parallel_size:
            return
        fs_init.destroy_model_parallel()
    with contextlib.redirect_stdout(io.StringIO()):  # fairscale prints its group sizes on rank 0
        fs_init.initialize_model_parallel(model_parallel_size)


def model_parallel_ready() -> bool:
    return dist.is_initialized() and fs_init.model_parallel_is_initialized()


def mp_rank() -> int:
    return fs_init.get_model_parallel_rank()


def mp_world() -> int:
    return fs_init.get_model_parallel_world_size()


def mp_group() -> dist.ProcessGroup:
    return fs_init.get_model_parallel_group()


def dp_rank() -> int:
    return fs_init.get_data_parallel_rank()


def dp_world() -> int:
    return fs_init.get_data_parallel_world_size()


def dp_group() -> dist.ProcessGroup:
    return fs_init.get_data_parallel_group()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
