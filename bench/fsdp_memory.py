"""FSDP memory: per-rank bytes of parameters + gradients + optimizer state over 2 ranks against 1.

    python bench/fsdp_memory.py [--quick]

Each run is what `accessory.main_finetune.build()` makes from the entrypoint's flags
(`--data_parallel fsdp --precision bf16`, a random checkpoint of dim 1024, 8 layers, vocab 32000:
166M parameters; --quick: dim 512, 4 layers) in a plain process (1 rank: the entrypoint leaves a
data-parallel group of one unwrapped, so this is the unsharded baseline) or a real 2-process
torchrun job, followed by one `Trainer._step`. Each rank then counts the bytes of the storages
behind its local tensors: parameters (FSDP2 DTensor shards), gradients (taken just before the
step's zero_grad) and AdamW's state; and it reads its peak RSS (VmHWM) minus its RSS before
building, as a second figure that also holds activations, all-gathered parameters and the loaded
checkpoint (split into the peak while building, i.e. sharding and loading, and during the step).
With 2 ranks the entrypoint shards the still-unloaded weights first and each rank loads only its
own rows, so the building peak is about a rank's share too.
`--data_parallel sdp` over 2 ranks is shown for reference.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List

import common

NAME = "fsdp_memory"
FULL = {"dim": 1024, "n_layers": 8, "n_heads": 16, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 2048}
QUICK = {**FULL, "dim": 512, "n_layers": 4, "n_heads": 8}
RUNS = [("fsdp", 1), ("fsdp", 2), ("sdp", 2)]
TARGET = 0.55
MIB = 1024 ** 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 4-layer dim-512 model instead of 8-layer dim-1024")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON list of the entrypoint's flags
    return p.parse_args()


# ----- one rank -----------------------------------------------------------------------------

def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (DTensors: their local shard)."""
    from torch.distributed.tensor import DTensor

    seen: Dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        storage = local.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def worker(flags: List[str]) -> None:
    import torch.distributed as dist

    from accessory.distributed import groups

    groups.init_process_group()
    baseline_kib = common.proc_status_kib("VmRSS")
    entry = common.EntrypointTrainer(flags)
    model, optimizer = entry.trainer.model, entry.trainer.optimizer
    grads: Dict[str, int] = {}
    zero_grad = optimizer.zero_grad

    def counting_zero_grad(*args, **kwargs):  # the step ends with zero_grad: count gradients just before
        grads["bytes"] = storage_bytes(p.grad for p in model.parameters())
        return zero_grad(*args, **kwargs)

    optimizer.zero_grad = counting_zero_grad
    build_peak_kib = common.proc_status_kib("VmHWM")
    reset = common.reset_peak_rss()
    entry.step()
    states = [v for state in optimizer.state.values() for v in state.values() if hasattr(v, "untyped_storage")]
    result = {"rank": dist.get_rank(), "params_mib": storage_bytes(model.parameters()) / MIB,
              "grads_mib": grads["bytes"] / MIB, "optimizer_mib": storage_bytes(states) / MIB,
              "baseline_mib": baseline_kib / 1024, "build_peak_mib": build_peak_kib / 1024,
              "step_peak_mib": common.proc_status_kib("VmHWM") / 1024 if reset else None}
    result["peak_mib"] = max(result["build_peak_mib"], result["step_peak_mib"] or 0)
    result["total_mib"] = result["params_mib"] + result["grads_mib"] + result["optimizer_mib"]
    entry.close()
    print(json.dumps(result), flush=True)


# ----- orchestration ------------------------------------------------------------------------

def prepare_inputs(params: Dict[str, Any]) -> Dict[str, Path]:
    work = common.work_dir(NAME)
    config = common.write_params(work / f"params_{params['dim']}.json", params)
    tokenizer = common.tokenizer_path(threads=2)
    ckpt = common.random_checkpoint(work / f"ckpt_{params['dim']}", config, tokenizer, threads=2)
    rng = random.Random(0)
    records = [{"instruction": "Continue.", "output": " ".join(common.synthetic_words(rng, 80))} for _ in range(16)]
    (work / "records.json").write_text(json.dumps(records))
    return {"params": config, "tokenizer": tokenizer, "ckpt": ckpt, "work": work,
            "data": common.data_yaml(work / "data.yaml", work / "records.json")}


def run(inputs: Dict[str, Path], mode: str, nproc: int) -> List[Dict[str, Any]]:
    output_dir = inputs["work"] / f"out_{mode}_{nproc}"
    shutil.rmtree(output_dir, ignore_errors=True)
    flags = ["--output_dir", output_dir, "--llama_config", inputs["params"], "--tokenizer_path", inputs["tokenizer"],
             "--pretrained_path", inputs["ckpt"], "--data_config", inputs["data"], "--max_words", 64,
             "--batch_size", 2, "--data_parallel", mode, "--precision", "bf16", "--num_workers", 0,
             "--cache_dir", inputs["work"] / "cache"]
    args = [Path(__file__).resolve(), "--worker", json.dumps([str(f) for f in flags])]
    result = common.run(args, threads=1) if nproc == 1 else common.torchrun(nproc, args, threads=1)
    shutil.rmtree(output_dir, ignore_errors=True)
    return sorted(common.json_lines(result.stdout), key=lambda r: r["rank"])


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    info = common.machine(threads=1)
    common.print_machine(info)
    params = QUICK if args.quick else FULL
    inputs = prepare_inputs(params)
    results = []
    for mode, nproc in RUNS:
        for r in run(inputs, mode, nproc):
            r.update(mode=mode, ranks=nproc, rss_mib=r["peak_mib"] - r["baseline_mib"],
                     build_rss_mib=r["build_peak_mib"] - r["baseline_mib"],
                     step_rss_mib=(r["step_peak_mib"] or r["peak_mib"]) - r["baseline_mib"])
            results.append(r)
            print(f"  {mode} x{nproc} rank {r['rank']}: params+grads+optimizer {r['total_mib']:.0f} MiB, "
                  f"peak RSS +{r['rss_mib']:.0f} MiB", flush=True)
    one = next(r for r in results if r["ranks"] == 1)
    two = [r for r in results if r["mode"] == "fsdp" and r["ranks"] == 2]
    ratio = max(r["total_mib"] for r in two) / one["total_mib"]
    rss_ratio = max(r["rss_mib"] for r in two) / one["rss_mib"]
    build_ratio = max(r["build_rss_mib"] for r in two) / one["build_rss_mib"]
    info["loadavg_end"] = common.loadavg()

    print()
    common.print_machine(info)
    print(f"model: dim {params['dim']}, {params['n_layers']} layers, vocab 32000; main_finetune.build() with "
          f"--precision bf16 (fp32 master weights), one Trainer._step; 2 ranks = torchrun --nproc_per_node 2\n")
    rows = [[r["mode"], r["ranks"], r["rank"], r["params_mib"], r["grads_mib"], r["optimizer_mib"], r["total_mib"],
             r["rss_mib"], r["build_rss_mib"], r["step_rss_mib"]] for r in results]
    common.print_table(["--data_parallel", "ranks", "rank", "params MiB", "grads MiB", "AdamW state MiB",
                        "sum MiB", "peak RSS - baseline MiB", "of which: build", "step"], rows)
    print(f"\nfsdp, 2 ranks / 1 rank, per rank: params+grads+optimizer {ratio:.3f}x (target <= {TARGET}x: "
          f"{common.verdict(ratio <= TARGET)}), peak RSS {rss_ratio:.3f}x (while building and loading: {build_ratio:.3f}x)")
    common.write_result(NAME, {"machine": info, "setup": {"params": params, "vocab_size": 32000, "precision": "bf16",
                                                          "batch": "2 x 64 tokens"},
                               "ranks": results, "ratio_state": ratio, "ratio_peak_rss": rss_ratio,
                               "ratio_build_rss": build_ratio,
                               "target": f"<= {TARGET}x", "target_met": ratio <= TARGET}, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
