"""GPU training throughput and MFU of the real entrypoint: bf16, FSDP, fused AdamW, SDPA attention.

    python bench/gpu.py [--quick] [--shape 7B|3B|1B]

Runs only where CUDA exists (prints a skip line otherwise). Every local GPU joins one
`torchrun -m accessory.main_finetune --precision bf16 --data_parallel fsdp --max_words 2048
--batch_size 4` job per configuration: activation checkpointing off/on x packing off/on. The model
is Llama 2 7B-shaped when the GPUs hold at least 160 GB together (16 bytes per parameter of
weights, gradients and AdamW state, plus activations), else a 3B shape (dim 3200, 26 layers), from a
random bf16 checkpoint made once with tools/make_random_checkpoint.py. Data: Alpaca
(`shared/data/alpaca_5000.json`, Llama 2 tokenizer) repeated to last the run, else synthetic
records of Alpaca-like lengths.

The trainer's own tokens/s (metrics.jsonl: non-padding tokens of all ranks per second) is read
for each step; the job is stopped once enough steps are logged (so no final checkpoint is
written), warm-up steps are skipped and the median is reported. MFU = tokens/s x 6 x matmul
parameters / (GPUs x peak), attention FLOPs not counted (conservative), against both the GPU's
nominal dense bf16 peak and a measured large bf16 matmul. Target: >= 55% MFU on H100/H200.
Unpacked rows use SDPA's causal flash kernel; packed rows pass a per-sample mask, which SDPA serves
with its memory-efficient kernel instead.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import common

NAME = "gpu"
SHAPES = {
    "7B": {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 4096},
    "3B": {"dim": 3200, "n_layers": 26, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-6, "max_seq_len": 2048},
    "1B": {"dim": 2048, "n_layers": 16, "n_heads": 16, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 2048},
}
SMOKE = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-5, "max_seq_len": 256}
NOMINAL_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("GH200", 989e12),
                ("A100", 312e12), ("L40S", 362e12)]  # dense bf16 FLOP/s, matched by substring in this order
CONFIGS = [(False, False), (False, True), (True, False), (True, True)]  # (checkpointing, packing)
TARGET = 0.55
VOCAB = 32000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps, packing only")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 7B if it fits, else 3B")
    p.add_argument("--steps", type=int, default=None, help="measured steps per configuration (default 10, quick 4)")
    p.add_argument("--warmup", type=int, default=3, help="steps skipped per configuration")
    p.add_argument("--cpu_smoke", action="store_true", help=argparse.SUPPRESS)  # the plumbing, tiny, on CPU
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # GPU facts, in a process of its own
    args = p.parse_args()
    args.steps = args.steps or (4 if args.quick else 10)
    return args


# ----- hardware -----------------------------------------------------------------------------

def probe() -> None:
    """Print the GPUs and GPU 0's measured bf16 matmul peak as a JSON line (run in a child process, so
    that this process holds no CUDA context on GPU 0 while the jobs run)."""
    import torch

    props = torch.cuda.get_device_properties(0)
    print(json.dumps({"count": torch.cuda.device_count(), "name": props.name,
                      "memory_gib": props.total_memory / 1024 ** 3, "measured_peak": measured_peak()}))


def gpus() -> Dict[str, Any]:
    return common.last_json_line(common.run([Path(__file__).resolve(), "--probe"], threads=1).stdout)


def nominal_peak(name: str) -> Optional[float]:
    return next((peak for key, peak in NOMINAL_BF16 if key in name), None)


def measured_peak(size: int = 8192, repeats: int = 20) -> float:
    """bf16 FLOP/s of a large torch.matmul on GPU 0."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (start.elapsed_time(end) / 1e3)


def choose_shape(hw: Dict[str, Any]) -> str:
    return "7B" if hw["count"] * hw["memory_gib"] >= 160 else "3B"


def matmul_params(params: Dict[str, Any]) -> int:
    from accessory.model.llama import ModelArgs

    a = ModelArgs(**params, vocab_size=VOCAB)
    per_layer = 2 * a.dim * a.n_heads * a.head_dim + 2 * a.dim * a.kv_heads * a.head_dim + 3 * a.dim * a.ffn_hidden_dim
    return a.n_layers * per_layer + a.dim * VOCAB


# ----- inputs -------------------------------------------------------------------------------

def prepare_inputs(params: Dict[str, Any], label: str, repeat: int) -> Dict[str, Path]:
    work = common.work_dir(f"{NAME}_{label}")
    config = common.write_params(work / "params.json", params)
    tokenizer = common.tokenizer_path(threads=os.cpu_count() or 1)
    ckpt = common.random_checkpoint(work / "ckpt", config, tokenizer, threads=os.cpu_count() or 1, dtype="bf16")
    alpaca = common.SHARED_DATA / "alpaca_5000.json"
    data = alpaca if alpaca.is_file() and tokenizer == common.LLAMA2_TOKENIZER else synthetic_alpaca(work)
    yaml = work / "data.yaml"
    yaml.write_text(f"META:\n  - path: '{data}'\n    type: 'text'\n    ratio: {repeat}\n")
    return {"params": config, "tokenizer": tokenizer, "ckpt": ckpt, "data": yaml, "work": work}


def synthetic_alpaca(work: Path, records: int = 5000) -> Path:
    """Records with Alpaca-like answer lengths (a long tail over a median of about 100 tokens)."""
    rng = random.Random(0)
    rows = [{"instruction": "Write about the topic.", "output": " ".join(common.synthetic_words(
        rng, min(1500, int(rng.lognormvariate(4.0, 0.9)))))} for _ in range(records)]
    path = work / "synthetic_alpaca.json"
    path.write_text(json.dumps(rows))
    return path


# ----- one configuration --------------------------------------------------------------------

def run_config(inputs: Dict[str, Path], nproc: int, checkpointing: bool, packing: bool, steps: int,
               max_words: int, device_flags: List[str], timeout: float = 1800) -> Dict[str, Any]:
    """Launch the job, stop it once `steps` metrics are logged, return its per-step records."""
    output_dir = inputs["work"] / f"out_ckpt{int(checkpointing)}_pack{int(packing)}"
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "accessory.main_finetune", "--output_dir", output_dir, "--llama_config", inputs["params"],
               "--tokenizer_path", inputs["tokenizer"], "--pretrained_path", inputs["ckpt"],
               "--data_config", inputs["data"], "--max_words", max_words, "--batch_size", 4,
               "--precision", "bf16", "--data_parallel", "fsdp", "--lr", 1e-5, "--skip_bad_samples",
               "--cache_dir", inputs["work"] / "cache", *device_flags,
               *(["--checkpointing"] if checkpointing else []), *(["--packing"] if packing else [])]
    log = (inputs["work"] / f"{output_dir.name}.log").open("w")
    threads = max(1, (os.cpu_count() or 1) // nproc)
    proc = subprocess.Popen([str(c) for c in command], cwd=common.REPO, env=common.child_env(threads), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    records = wait_for_steps(proc, output_dir / "metrics.jsonl", steps, timeout)
    log.close()
    shutil.rmtree(output_dir, ignore_errors=True)
    if len(records) < steps:
        tail = Path(log.name).read_text()[-1500:]
        return {"error": f"exit {proc.returncode} after {len(records)} steps (log {log.name}):\n{tail}"}
    return {"records": records}


def wait_for_steps(proc: subprocess.Popen, metrics: Path, steps: int, timeout: float) -> List[Dict[str, Any]]:
    """Poll metrics.jsonl until `steps` records (then stop the job: no final checkpoint) or the job ends."""
    deadline, records = time.time() + timeout, []
    while proc.poll() is None and time.time() < deadline:
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        if len(records) >= steps:
            break
        time.sleep(1.0)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the job's own process group (start_new_session)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return records[:steps]


# ----- main ---------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    if args.probe:
        return probe()
    import torch

    if not (torch.cuda.is_available() or args.cpu_smoke):
        print("skipped: bench/gpu.py needs CUDA (no GPU visible to torch here)")
        return
    info = common.machine()
    common.print_machine(info)
    if args.cpu_smoke:
        hw, shape, params, max_words, nproc = {"count": 2, "name": "cpu"}, "smoke", SMOKE, 128, 2
        peaks = {"measured": common.matmul_peak("bf16", size=1024)["wall"], "nominal": None}
        device_flags = ["--num_workers", 0]
    else:
        hw = gpus()
        shape = args.shape or choose_shape(hw)
        params, max_words, nproc = SHAPES[shape], 2048, hw["count"]
        peaks = {"measured": hw.pop("measured_peak"), "nominal": nominal_peak(hw["name"])}
        device_flags = ["--num_workers", 4]
    total_steps = args.warmup + args.steps
    inputs = prepare_inputs(params, shape, repeat=max(1, nproc * total_steps // 40 + 1))
    flops_per_token = 6 * matmul_params(params)
    configs = [c for c in CONFIGS if c[1]] if args.quick else CONFIGS
    results = [measure_config(inputs, nproc, c, p, args, max_words, device_flags, flops_per_token, peaks)
               for c, p in configs]
    rows = [[r["checkpointing"], r["packing"], r.get("tokens_per_s", "failed"), r.get("tokens_per_step", ""),
             pct(r.get("mfu_nominal")), pct(r.get("mfu_measured"))] for r in results]
    best = max((r.get("mfu_nominal") or r.get("mfu_measured") or 0.0) for r in results)

    print()
    common.print_machine(info)
    print(f"{nproc} x {hw['name']}, shape {shape} ({matmul_params(params) / 1e9:.2f}B matmul parameters), bf16, "
          f"--data_parallel fsdp, max_words {max_words}, batch_size 4 per GPU; bf16 matmul peak measured "
          f"{peaks['measured'] / 1e12:.0f} TFLOP/s, nominal {pct_or_none(peaks['nominal'])}\n")
    common.print_table(["checkpointing", "packing", "tokens/s (all GPUs)", "tokens/step (all GPUs)", "MFU (nominal)",
                        "MFU (measured peak)"], rows)
    print(f"\nbest MFU {best:.1%}; target >= {TARGET:.0%} on H100/H200: {common.verdict(best >= TARGET)}")
    if args.cpu_smoke:  # a check of this script's plumbing: nothing to keep
        return
    common.write_result(NAME, {
        "machine": info, "setup": {"gpus": hw, "shape": shape, "params": params, "max_words": max_words,
                                   "batch_size": 4, "steps": args.steps, "warmup": args.warmup,
                                   "flops_per_token": flops_per_token, "peaks": peaks},
        "runs": results, "best_mfu": best, "target": f">= {TARGET:.0%}", "target_met": best >= TARGET})


def measure_config(inputs: Dict[str, Path], nproc: int, checkpointing: bool, packing: bool, args: argparse.Namespace,
                   max_words: int, device_flags: List[str], flops_per_token: float,
                   peaks: Dict[str, Optional[float]]) -> Dict[str, Any]:
    run = run_config(inputs, nproc, checkpointing, packing, args.warmup + args.steps, max_words, device_flags)
    result: Dict[str, Any] = {"checkpointing": checkpointing, "packing": packing}
    if "error" in run:
        print(f"  checkpointing {checkpointing}, packing {packing}: FAILED\n{run['error']}", flush=True)
        return {**result, "error": run["error"]}
    tps = common.median([r["tokens_per_s"] for r in run["records"][args.warmup:]])
    print(f"  checkpointing {checkpointing}, packing {packing}: {tps:.0f} tokens/s", flush=True)
    return {**result, "tokens_per_s": tps, "tokens_per_step": common.median([r["tokens"] for r in run["records"]]),
            "mfu_measured": tps * flops_per_token / (nproc * peaks["measured"]),
            "mfu_nominal": tps * flops_per_token / (nproc * peaks["nominal"]) if peaks["nominal"] else None}


def pct(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1%}"


def pct_or_none(peak: Optional[float]) -> str:
    return "unknown for this GPU" if peak is None else f"{peak / 1e12:.0f} TFLOP/s"


if __name__ == "__main__":
    sys.exit(main())
