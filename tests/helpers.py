"""Shared test helpers: running real torchrun jobs and the repo's tools as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # several ranks share 2 cores: no oversubscription
    return env


def run_python(args: Sequence[str], timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`python ARGS` from the repo root, output captured."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"python {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def torchrun(nproc: int, args: Sequence[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """A real multi-process job: `torchrun --standalone --nproc_per_node=N ARGS` (gloo on CPU)."""
    return run_python(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
                      timeout=timeout, check=check)
