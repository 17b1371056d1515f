"""Checkpoint loading memory: peak RSS per rank of `accessory.load`, against the rank's share of the weights.

    python bench/load_memory.py [--quick]

A random bf16 checkpoint of about 1 GB (dim 2048, 8 layers, vocab 32000: 542M parameters; --quick:
dim 1024, 4 layers, 0.23 GB) is written by tools/make_random_checkpoint.py as 1 shard and as 2
shards, and loaded with `accessory.load(..., dtype=torch.bfloat16)` at model-parallel size 1 (a plain
process) and 2 (a real 2-process torchrun job): 4 combinations. In each rank the baseline is the RSS
just before the call (torch, fairscale and the process group already set up), the peak is VmHWM
after it (reset to the baseline first through /proc/self/clear_refs where the kernel allows it), and
the figure is (peak - baseline) / (bytes of the rank's own parameters). Mapped checkpoint pages
count while they are mapped, so the figure includes what the loader keeps mapped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import common

NAME = "load_memory"
FULL = {"dim": 2048, "n_layers": 8, "n_heads": 16, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 2048}
QUICK = {**FULL, "dim": 1024, "n_layers": 4, "n_heads": 8}
TARGET = 1.3
MIB = 1024 ** 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 0.23 GB checkpoint instead of 1.1 GB")
    p.add_argument("--worker", nargs=2, metavar=("CKPT", "MP"), help=argparse.SUPPRESS)
    return p.parse_args()


def worker(ckpt: str, mp: int) -> None:
    """One rank: load, then print {rank, baseline, peak, share} as a JSON line."""
    import torch

    import accessory
    from accessory.distributed import groups

    groups.init_model_parallel(mp)
    baseline_kib = common.proc_status_kib("VmRSS")
    reset = common.reset_peak_rss()
    model = accessory.load(ckpt, model_parallel_size=mp, dtype=torch.bfloat16)
    peak_kib = common.proc_status_kib("VmHWM")
    share = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"rank": groups.mp_rank(), "baseline_mib": baseline_kib / 1024, "peak_mib": peak_kib / 1024,
                      "after_mib": common.proc_status_kib("VmRSS") / 1024, "share_mib": share / MIB,
                      "hwm_reset": reset}), flush=True)


def prepare_checkpoints(params: Dict[str, Any]) -> Dict[int, Path]:
    work = common.work_dir(NAME)
    config = common.write_params(work / f"params_{params['dim']}.json", params)
    tokenizer = common.tokenizer_path(threads=2)
    return {shards: common.random_checkpoint(work / f"ckpt_{params['dim']}_{shards}shard", config, tokenizer,
                                             threads=2, model_parallel_size=shards, dtype="bf16")
            for shards in (1, 2)}


def measure(ckpt: Path, mp: int) -> List[Dict[str, Any]]:
    args = [Path(__file__).resolve(), "--worker", ckpt, mp]
    result = common.run(args, threads=1) if mp == 1 else common.torchrun(mp, args, threads=1)
    ranks = sorted(common.json_lines(result.stdout), key=lambda r: r["rank"])
    for r in ranks:
        r["ratio"] = (r["peak_mib"] - r["baseline_mib"]) / r["share_mib"]
    return ranks


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]))
    info = common.machine(threads=1)
    common.print_machine(info)
    params = QUICK if args.quick else FULL
    ckpts = prepare_checkpoints(params)
    size_mib = sum(f.stat().st_size for f in ckpts[1].glob("*.pth")) / MIB
    results: List[Dict[str, Any]] = []
    for shards in (1, 2):
        for mp in (1, 2):
            for r in measure(ckpts[shards], mp):
                results.append({"shards": shards, "mp": mp, **r})
                print(f"  {shards}-shard file, MP {mp}, rank {r['rank']}: +{r['peak_mib'] - r['baseline_mib']:.0f} MiB "
                      f"peak for a {r['share_mib']:.0f} MiB share ({r['ratio']:.2f}x)", flush=True)
    worst = max(r["ratio"] for r in results)
    info["loadavg_end"] = common.loadavg()

    print()
    common.print_machine(info)
    print(f"checkpoint: dim {params['dim']}, {params['n_layers']} layers, vocab 32000, bf16, {size_mib:.0f} MiB; "
          f"accessory.load(dtype=bfloat16); MP 2 = torchrun --nproc_per_node 2\n")
    rows = [[r["shards"], r["mp"], r["rank"], r["baseline_mib"], r["peak_mib"] - r["baseline_mib"], r["share_mib"],
             f"{r['ratio']:.2f}x"] for r in results]
    common.print_table(["file shards", "MP", "rank", "baseline MiB", "peak - baseline MiB", "share MiB",
                        "ratio"], rows)
    print(f"\nworst ratio {worst:.2f}x; target <= {TARGET}x: {common.verdict(worst <= TARGET)}"
          + ("" if all(r["hwm_reset"] for r in results) else " (VmHWM could not be reset: peak since process start)"))
    common.write_result(NAME, {"machine": info, "setup": {"params": params, "vocab_size": 32000, "dtype": "bf16",
                                                          "checkpoint_mib": size_mib},
                               "ranks": results, "worst_ratio": worst, "target": f"<= {TARGET}x",
                               "target_met": worst <= TARGET}, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
