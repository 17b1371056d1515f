"""Packing: effective (non-padding) training tokens/s with padded batches against packed rows.

    python bench/packing.py [--quick] [--threads N] [--precision bf16|fp32]

Data: Alpaca's real length distribution, `shared/data/alpaca_5000.json` beside the repo tokenized
with the Llama 2 tokenizer (skipped with a message when either is absent; its 2 records with empty
outputs are skipped with --skip_bad_samples). Both sides are what `accessory.main_finetune.build()`
makes from the entrypoint's flags (`--max_words 512 --batch_size 4 --skip_bad_samples`, with and
without `--packing`), so the data goes through the real pipeline (`build_finetune_data`, sampler,
collate: padded batches are padded to their longest sample), on a small LLaMA (dim 256, 4 layers,
vocab 32000) from tools/make_random_checkpoint.py.

The sides take turns within each round: one packed step, then as many padded steps as hold about
the same number of samples (a packed row holds ~4 Alpaca samples), in an order that flips every
round. A side's effective tokens/s is its non-padding tokens over its step time, both from the
trainer's metrics.jsonl records; the ratio is paired per round and its median reported. The padding
statistics of a whole epoch (share of non-padding tokens in what the model computes) are shown too.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List

import common

NAME = "packing"
ALPACA = common.SHARED_DATA / "alpaca_5000.json"
PARAMS = {"dim": 256, "n_layers": 4, "n_heads": 4, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 2048}
MAX_WORDS, BATCH = 512, 4
TARGET = 2.5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    p.add_argument("--threads", type=int, default=common.default_threads())
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="the entrypoint's default: bf16")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 24, quick 4)")
    p.add_argument("--warmup", type=int, default=None, help="rounds skipped first (default 2, quick 1)")
    args = p.parse_args()
    args.rounds = args.rounds or (4 if args.quick else 24)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    return args


def prepare_inputs(threads: int) -> Dict[str, Path]:
    work = common.work_dir(NAME)
    params = common.write_params(work / "params.json", PARAMS)
    ckpt = common.random_checkpoint(work / "ckpt", params, common.LLAMA2_TOKENIZER, threads)
    return {"params": params, "ckpt": ckpt, "work": work, "data": common.data_yaml(work / "alpaca.yaml", ALPACA)}


def flags(inputs: Dict[str, Path], packing: bool, precision: str) -> List[Any]:
    output_dir = inputs["work"] / ("out_packed" if packing else "out_padded")
    shutil.rmtree(output_dir, ignore_errors=True)
    return ["--output_dir", output_dir, "--llama_config", inputs["params"], "--tokenizer_path", common.LLAMA2_TOKENIZER,
            "--pretrained_path", inputs["ckpt"], "--data_config", inputs["data"], "--max_words", MAX_WORDS,
            "--batch_size", BATCH, "--skip_bad_samples", "--precision", precision, "--num_workers", 0,
            "--lr", 1e-5, "--cache_dir", inputs["work"] / "cache", *(["--packing"] if packing else [])]


def epoch_fill(entry: common.EntrypointTrainer) -> Dict[str, float]:
    """Over one whole epoch of the loader: non-padding tokens / computed token slots, and per step."""
    loader = entry.trainer.loader
    loader.set_epoch(0)
    real = slots = steps = 0
    for batch in loader:
        real, slots, steps = real + int(batch["lengths"].sum()), slots + batch["tokens"].numel(), steps + 1
    entry.epoch = 0
    entry._start_epoch()
    return {"fill": real / slots, "real_tokens_per_step": real / steps, "samples": len(loader.sampler) * BATCH}


def run_side(entry: common.EntrypointTrainer, steps: int) -> Dict[str, float]:
    records = [entry.step() for _ in range(steps)]
    return {"tokens": sum(r["tokens"] for r in records),
            "seconds": sum(r["tokens"] / r["tokens_per_s"] for r in records)}


def interleave(padded: common.EntrypointTrainer, packed: common.EntrypointTrainer, padded_per_round: int,
               rounds: int, warmup: int) -> List[Dict[str, Dict[str, float]]]:
    measured = []
    for r in range(warmup + rounds):
        order = [("packed", packed, 1), ("padded", padded, padded_per_round)]
        if r % 2:
            order.reverse()
        result = {name: run_side(entry, steps) for name, entry, steps in order}
        rates = {name: v["tokens"] / v["seconds"] for name, v in result.items()}
        label = "warm-up" if r < warmup else f"round {r - warmup + 1}/{rounds}"
        print(f"  {label:<13} padded {rates['padded']:6.0f}  packed {rates['packed']:6.0f} effective tokens/s  "
              f"ratio {rates['packed'] / rates['padded']:.2f}", flush=True)
        if r >= warmup:
            measured.append(result)
    return measured


def summarize(measured: List[Dict[str, Dict[str, float]]]) -> Dict[str, Any]:
    def rate(name: str, i: int) -> float:
        return measured[i][name]["tokens"] / measured[i][name]["seconds"]

    total = {name: sum(m[name]["tokens"] for m in measured) / sum(m[name]["seconds"] for m in measured)
             for name in ("padded", "packed")}
    ratio = common.median([rate("packed", i) / rate("padded", i) for i in range(len(measured))])
    return {"effective_tokens_per_s": total, "ratio_packed_over_padded": ratio,
            "target": f"packed >= {TARGET}x padded", "target_met": ratio >= TARGET}


def main() -> None:
    args = parse_args()
    if not (ALPACA.is_file() and common.LLAMA2_TOKENIZER.is_file()):
        print(f"skipped: needs {ALPACA} and {common.LLAMA2_TOKENIZER} (the shared data beside the repo)")
        return
    common.set_threads(args.threads)
    info = common.machine(args.threads)
    common.print_machine(info)
    inputs = prepare_inputs(args.threads)
    padded = common.EntrypointTrainer(flags(inputs, False, args.precision))
    packed = common.EntrypointTrainer(flags(inputs, True, args.precision))
    fills = {"padded": epoch_fill(padded), "packed": epoch_fill(packed)}
    per_round = max(1, round(fills["packed"]["real_tokens_per_step"] / fills["padded"]["real_tokens_per_step"]))
    print(f"  {per_round} padded steps per packed step (about the same samples)")
    measured = interleave(padded, packed, per_round, args.rounds, args.warmup)
    summary = summarize(measured)
    for entry in (padded, packed):
        entry.close()
        shutil.rmtree(entry.output_dir, ignore_errors=True)
    info["loadavg_end"] = common.loadavg()

    print()
    common.print_machine(info)
    print(f"data: {ALPACA.name}, Llama 2 tokenizer, max_words {MAX_WORDS}, batch_size {BATCH}; model dim "
          f"{PARAMS['dim']}, {PARAMS['n_layers']} layers, vocab 32000, --precision {args.precision}; "
          f"main_finetune.build() + Trainer._step, {args.rounds} rounds after {args.warmup} warm-up\n")
    rows = [[name, f"{fills[name]['fill']:.1%}", fills[name]["real_tokens_per_step"],
             summary["effective_tokens_per_s"][name]] for name in ("padded", "packed")]
    common.print_table(["batches", "non-padding share (epoch)", "real tokens/step", "effective tokens/s"], rows)
    print(f"\npacked / padded effective tokens/s (median of paired rounds): {summary['ratio_packed_over_padded']:.2f}x"
          f"  target >= {TARGET}x: {common.verdict(summary['target_met'])}")
    print(f"(padding every sample to max_words, as LLaMA2-Accessory did, would leave a non-padding share of "
          f"{fills['padded']['real_tokens_per_step'] / (BATCH * MAX_WORDS):.1%})")
    common.write_result(NAME, {"machine": info, "setup": {
        "data": ALPACA.name, "max_words": MAX_WORDS, "batch_size": BATCH, "params": PARAMS,
        "precision": args.precision, "rounds": args.rounds, "padded_steps_per_round": per_round,
        "ours": "accessory.main_finetune.build() (--packing or not) + Trainer._step, metrics.jsonl"},
        "epoch_padding": fills, **summary})


if __name__ == "__main__":
    sys.exit(main())
