"""Job-wide error handling for every entrypoint and tool: a user error is one line on stderr,
printed once per job, and any error ends this process at once so that torchrun stops the other
ranks instead of leaving them waiting in a collective."""
from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

from accessory.errors import AccessoryError


def run_entrypoint(main: Callable[[], None]) -> None:
    try:
        main()
    except AccessoryError as e:
        _exit(2, f"error: {e}" if _first_to_report() else None)
    except KeyboardInterrupt:
        _exit(130, None)
    except SystemExit:
        raise
    except BaseException:  # a bug: the whole traceback, from the rank that hit it
        _exit(1, traceback.format_exc().rstrip())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.destroy_process_group()


def _first_to_report() -> bool:
    """Every rank usually meets the same bad input: let only the first one say so."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return True
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=5))
        return store.add("accessory/error_reported", 1) == 1
    except Exception:  # the store is gone with its host: better twice than never
        return True


def _exit(code: int, message: str | None) -> None:
    if message:
        rank = dist.get_rank() if dist.is_initialized() and dist.get_world_size() > 1 else None
        print(message if rank is None else f"[rank {rank}] {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if dist.is_initialized() and dist.get_world_size() > 1:
        os._exit(code)  # no atexit/destroy_process_group: they would wait on the other ranks
    sys.exit(code)
