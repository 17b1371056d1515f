"""Shared pieces of the benchmarks: machine description, thread settings, subprocess runs with the
repo importable, the matmul peak, RSS readings, inputs (tokenizer, random checkpoints, data), a
printed table and the JSON result under bench/results/."""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA2_TOKENIZER = SHARED_DATA / "llama2-tokenizer.model"
RESULTS = BENCH / "results"
WORK = BENCH / ".work"  # generated inputs (checkpoints, data, outputs); git-ignored

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars from the trainer (read when tqdm is imported)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ----- machine and threads -------------------------------------------------------------------

def default_threads() -> int:
    return len(os.sched_getaffinity(0))


def set_threads(threads: int) -> None:
    """The same thread count for this process and (through the environment) every child."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import torch
    torch.set_num_threads(threads)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: Optional[int] = None) -> Dict[str, Any]:
    import torch
    info: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": default_threads(), "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(), "git": git_state(), "loadavg_start": loadavg(),
    }
    if torch.cuda.is_available():
        info["gpus"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return info


def git_state() -> str:
    """The commit measured, with '+changes' when accessory/ differs from it (the library is measured)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--", "accessory") else "") if commit else "unknown"
    except OSError:
        return "unknown"


def loadavg() -> float:
    """The 1-minute load average: how busy the machine was (other users share it)."""
    return os.getloadavg()[0]


def print_machine(info: Dict[str, Any]) -> None:
    print("  ".join(f"{k}: {v}" for k, v in info.items()))


# ----- subprocesses -------------------------------------------------------------------------

def child_env(threads: int, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    env.update(extra or {})
    return env


def run(args: Sequence[Any], threads: int, timeout: float = 1200, env: Optional[Dict[str, str]] = None,
        ) -> subprocess.CompletedProcess:
    """`python ARGS` from the repo root; a failure raises with the output's tail."""
    command = [sys.executable, *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=child_env(threads, env), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def torchrun(nproc: int, args: Sequence[Any], threads: int, timeout: float = 1200) -> subprocess.CompletedProcess:
    return run(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
               threads, timeout)


def json_lines(output: str) -> List[Any]:
    """Every line of `output` that parses as a JSON object (each worker rank prints one)."""
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def last_json_line(output: str) -> Any:
    """The last line of `output` that parses as JSON (workers print their result that way)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON result line in the output:\n{output[-2000:]}")


# ----- measurements -------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def matmul_peak(dtype_name: str, size: int = 4096, repeats: int = 5) -> Dict[str, float]:
    """FLOP/s of a large square torch.matmul at the current thread count (median of `repeats`), by
    wall clock and by CPU time (see `Clock`)."""
    import torch
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    times: Dict[str, List[float]] = {"wall": [], "cpu": []}
    for _ in range(repeats):
        with Clock() as clock:
            torch.matmul(a, b)
        for key in times:
            times[key].append(clock.seconds[key])
    return {key: 2 * size ** 3 / median(values) for key, values in times.items()}


CLOCKS = {"wall": "wall clock (as the trainer reports)", "cpu": "CPU time / threads (robust to other load)"}


class Clock:
    """Wall-clock seconds and CPU seconds of this process divided by its torch threads: the time the
    work would take with its threads to itself. Other users of the machine stretch the first, not
    the second (exactly so with one thread; with more, threads waiting on a preempted peer spin and
    count a little)."""

    def __enter__(self) -> "Clock":
        import torch
        self.threads = torch.get_num_threads()
        self.start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: Any) -> None:
        wall, cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]
        self.seconds = {"wall": wall, "cpu": cpu / self.threads}


def proc_status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----- inputs -------------------------------------------------------------------------------

def work_dir(name: str) -> Path:
    path = WORK / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def tokenizer_path(threads: int) -> Path:
    """The Llama 2 tokenizer (vocab 32000) when present, else a 32000-token SentencePiece model
    trained with tools/train_tokenizer.py on a synthetic corpus (made once)."""
    if LLAMA2_TOKENIZER.is_file():
        return LLAMA2_TOKENIZER
    out = work_dir("tokenizer") / "tokenizer.model"
    if not out.is_file():
        corpus = out.with_name("corpus.txt")
        corpus.write_text("\n".join(" ".join(synthetic_words(random.Random(i), 40)) for i in range(40000)))
        run(["tools/train_tokenizer.py", "--input", corpus, "--vocab_size", 32000, "--output", out], threads)
    return out


def synthetic_words(rng: random.Random, count: int) -> List[str]:
    """Pseudo-words from syllables: varied enough for a large BPE vocabulary and for long samples."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "xi", "bo", "de", "fu", "gy"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(count)]


def write_params(path: Path, params: Dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params, indent=2))
    return path


def random_checkpoint(dst: Path, params: Path, tokenizer: Path, threads: int, model_parallel_size: int = 1,
                      dtype: str = "fp32") -> Path:
    """A random consolidated checkpoint made with tools/make_random_checkpoint.py (kept between runs;
    remade when params.json changes)."""
    stamp = dst / "bench_params.json"
    if not (stamp.is_file() and stamp.read_text() == params.read_text() + dtype + str(tokenizer)):
        run(["tools/make_random_checkpoint.py", "--llama_config", params, "--tokenizer_path", tokenizer, "--dst", dst,
             "--model_parallel_size", model_parallel_size, "--dtype", dtype], threads)
        stamp.write_text(params.read_text() + dtype + str(tokenizer))
    return dst


def data_yaml(path: Path, data_file: Path) -> Path:
    path.write_text(f"META:\n  - path: '{data_file}'\n    type: 'text'\n")
    return path


def read_metrics(output_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ----- output -------------------------------------------------------------------------------

def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def write_result(name: str, payload: Dict[str, Any], quick: bool = False) -> Path:
    """bench/results/<name>.json; a --quick smoke run writes bench/.work/<name>.quick.json instead,
    leaving the full run's result in place."""
    path = WORK / f"{name}.quick.json" if quick else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(rounded(payload), indent=2, default=str)
    text = re.sub(r"\[\s*([-0-9.e+, \n]*?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    path.write_text(text + "\n")  # lists of numbers on one line each: short, diff-friendly
    print(f"wrote {path.relative_to(REPO)}")
    return path


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits, through dicts and lists: small, diff-friendly JSON."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


# ----- the entrypoint's objects in this process ---------------------------------------------

class EntrypointTrainer:
    """What `python -m accessory.main_finetune FLAGS` builds (`main_finetune.build`), stepped one
    optimizer step at a time through `Trainer._step`, batches taken from its own loader in order
    (outside the timing, as its loop does). `step()` returns the trainer's metrics.jsonl record."""

    def __init__(self, flags: Sequence[Any]):
        from accessory.main_finetune import build
        from accessory.train.args import get_args_parser

        self.args = get_args_parser().parse_args([str(f) for f in flags])
        self.output_dir = Path(self.args.output_dir)
        self.trainer = build(self.args)
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.trainer.loader.set_epoch(self.epoch)
        self.trainer.metrics.start_epoch(self.epoch, len(self.trainer.loader), 0)
        self.batches = iter(self.trainer.loader)

    def next_batches(self) -> list:
        micro = []
        while len(micro) < self.args.accum_iter:
            try:
                micro.append(next(self.batches))
            except StopIteration:
                self.epoch += 1
                self._start_epoch()
                micro = []
        return micro

    def step(self, micro: Optional[list] = None) -> Dict[str, Any]:
        self.trainer._step(micro or self.next_batches(), len(self.trainer.loader))
        if not self.trainer.metrics.enabled:  # not the logging rank: no metrics.jsonl here
            return {}
        return read_metrics(self.output_dir)[-1]

    def close(self) -> None:
        self.trainer.metrics.close()
