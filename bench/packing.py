"""Packing: effective (non-padding) training tokens/s with padded batches against packed rows.

    python bench/packing.py [--quick] [--threads N] [--precision bf16|fp32]

Data: Alpaca's real length distribution, `shared/data/alpaca_5000.json` beside the repo tokenized
with the Llama 2 tokenizer (skipped with a message when either is absent; its 2 records with empty
outputs are skipped with --skip_bad_samples). Both sides are what `accessory.main_finetune.build()`
makes from the entrypoint's flags (`--max_words 512 --batch_size 4 --skip_bad_samples`, with and
without `--packing`), so the data goes through the real pipeline (`build_finetune_data`, sampler,
collate: padded batches are padded to their longest sample), on a small LLaMA (dim 256, 4 layers,
vocab 32000) from tools/make_random_checkpoint.py.

A third side shows what LLaMA2-Accessory itself did: the same padded batches widened to max_words
(its collate padded every sample to max_words; ours pads to the batch's longest sample).

The sides take turns within each round: one packed step, then for each padded side as many steps
as hold about the same number of samples (a packed row holds ~4 Alpaca samples), in an order that
flips every round. A side's effective tokens/s is its non-padding tokens (from the trainer's metrics.jsonl records)
over its step time, by wall clock (the trainer's) and by CPU time / threads (robust to other load,
see common.Clock); the ratio is paired per round and its median reported. The padding
statistics of a whole epoch (share of non-padding tokens in what the model computes) are shown too.
"""
from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import common

NAME = "packing"
ALPACA = common.SHARED_DATA / "alpaca_5000.json"
PARAMS = {"dim": 256, "n_layers": 4, "n_heads": 4, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 2048}
MAX_WORDS, BATCH = 512, 4
TARGET = 2.5
SIDES = ["packed", "padded", "padded to max_words"]


@dataclass
class Side:
    entry: common.EntrypointTrainer
    steps_per_round: int = 1
    pad_to: Optional[int] = None  # widen batches to this many tokens (LLaMA2-Accessory's padding)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    p.add_argument("--threads", type=int, default=common.default_threads())
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="the entrypoint's default: bf16")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 16, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="rounds skipped first (default 2, quick 1)")
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 16)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    return args


def prepare_inputs(threads: int) -> Dict[str, Path]:
    work = common.work_dir(NAME)
    params = common.write_params(work / "params.json", PARAMS)
    ckpt = common.random_checkpoint(work / "ckpt", params, common.LLAMA2_TOKENIZER, threads)
    return {"params": params, "ckpt": ckpt, "work": work, "data": common.data_yaml(work / "alpaca.yaml", ALPACA)}


def flags(inputs: Dict[str, Path], packing: bool, precision: str, name: str) -> List[Any]:
    output_dir = inputs["work"] / f"out_{name.split()[0]}{'_max' if 'max' in name else ''}"
    shutil.rmtree(output_dir, ignore_errors=True)
    return ["--output_dir", output_dir, "--llama_config", inputs["params"], "--tokenizer_path", common.LLAMA2_TOKENIZER,
            "--pretrained_path", inputs["ckpt"], "--data_config", inputs["data"], "--max_words", MAX_WORDS,
            "--batch_size", BATCH, "--skip_bad_samples", "--precision", precision, "--num_workers", 0,
            "--lr", 1e-5, "--cache_dir", inputs["work"] / "cache", *(["--packing"] if packing else [])]


def epoch_fill(entry: common.EntrypointTrainer, pad_to: Optional[int] = None) -> Dict[str, float]:
    """Over one whole epoch of the loader: non-padding tokens / computed token slots, and per step."""
    loader = entry.trainer.loader
    loader.set_epoch(0)
    real = slots = steps = 0
    for batch in loader:
        width = pad_to or batch["tokens"].shape[1]
        real, slots, steps = real + int(batch["lengths"].sum()), slots + batch["tokens"].shape[0] * width, steps + 1
    entry.epoch = 0
    entry._start_epoch()
    return {"fill": real / slots, "real_tokens_per_step": real / steps}


def widen(micro: List[Dict[str, Any]], width: int) -> List[Dict[str, Any]]:
    """Pad tokens (0) and labels (ignored) of each batch to `width` columns; `lengths` stays the real count."""
    import torch.nn.functional as F

    from accessory.data import IGNORE_INDEX

    fill = {"tokens": 0, "labels": IGNORE_INDEX}
    return [{key: F.pad(value, (0, width - value.shape[1]), value=fill[key]) if key in fill else value
             for key, value in batch.items()} for batch in micro]


def run_side(side: Side) -> Dict[str, float]:
    """Non-padding tokens of the side's steps in a round, with their wall seconds (the trainer's own
    timing) and their CPU seconds / threads (see common.Clock), batch loading excluded from both."""
    tokens = wall = cpu = 0.0
    for _ in range(side.steps_per_round):
        micro = side.entry.next_batches()
        if side.pad_to:
            micro = widen(micro, side.pad_to)
        with common.Clock() as clock:
            record = side.entry.step(micro)
        tokens, wall = tokens + record["tokens"], wall + record["tokens"] / record["tokens_per_s"]
        cpu += clock.seconds["cpu"]
    return {"tokens": tokens, "wall": wall, "cpu": cpu}


def interleave(sides: Dict[str, Side], rounds: int, warmup: int) -> List[Dict[str, Dict[str, float]]]:
    measured = []
    for r in range(warmup + rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        result = {name: run_side(sides[name]) for name in order}
        label = "warm-up" if r < warmup else f"round {r - warmup + 1}/{rounds}"
        print(f"  {label:<13} effective tokens/s wall (cpu): " + "  ".join(
            f"{name} {result[name]['tokens'] / result[name]['wall']:5.0f} "
            f"({result[name]['tokens'] / result[name]['cpu']:5.0f})" for name in SIDES), flush=True)
        if r >= warmup:
            measured.append(result)
    return measured


def summarize(measured: List[Dict[str, Dict[str, float]]], clock: str) -> Dict[str, Any]:
    """Effective tokens/s over all measured steps, and the medians of the per-round ratios."""
    def rate(name: str, m: Dict[str, Dict[str, float]]) -> float:
        return m[name]["tokens"] / m[name][clock]

    total = {name: sum(m[name]["tokens"] for m in measured) / sum(m[name][clock] for m in measured) for name in SIDES}
    ratios = {f"packed / {name}": common.median([rate("packed", m) / rate(name, m) for m in measured])
              for name in SIDES[1:]}
    return {"effective_tokens_per_s": total, "ratios": ratios, "target_met": ratios["packed / padded"] >= TARGET}


def main() -> None:
    args = parse_args()
    if not (ALPACA.is_file() and common.LLAMA2_TOKENIZER.is_file()):
        print(f"skipped: needs {ALPACA} and {common.LLAMA2_TOKENIZER} (the shared data beside the repo)")
        return
    common.set_threads(args.threads)
    info = common.machine(args.threads)
    common.print_machine(info)
    inputs = prepare_inputs(args.threads)
    sides = {name: Side(common.EntrypointTrainer(flags(inputs, name == "packed", args.precision, name)),
                        pad_to=MAX_WORDS if "max" in name else None) for name in SIDES}
    fills = {name: epoch_fill(side.entry, side.pad_to) for name, side in sides.items()}
    for name in SIDES[1:]:
        sides[name].steps_per_round = max(1, round(fills["packed"]["real_tokens_per_step"] /
                                                   fills[name]["real_tokens_per_step"]))
    print(f"  {sides['padded'].steps_per_round} padded steps per packed step (about the same samples)")
    measured = interleave(sides, args.rounds, args.warmup)
    summaries = {clock: summarize(measured, clock) for clock in common.CLOCKS}
    for side in sides.values():
        side.entry.close()
        shutil.rmtree(side.entry.output_dir, ignore_errors=True)
    info["loadavg_end"] = common.loadavg()
    report(info, fills, summaries, args)
    common.write_result(NAME, {"machine": info, "setup": {
        "data": ALPACA.name, "max_words": MAX_WORDS, "batch_size": BATCH, "params": PARAMS,
        "precision": args.precision, "rounds": args.rounds,
        "steps_per_round": {name: side.steps_per_round for name, side in sides.items()},
        "ours": "accessory.main_finetune.build() (--packing or not) + Trainer._step, metrics.jsonl"},
        "epoch_padding": fills, "target": f"packed >= {TARGET}x padded", "clocks": common.CLOCKS, **summaries},
        quick=args.quick)


def report(info: Dict[str, Any], fills: Dict[str, Dict[str, float]], summaries: Dict[str, Dict[str, Any]],
           args: argparse.Namespace) -> None:
    print()
    common.print_machine(info)
    print(f"data: {ALPACA.name}, Llama 2 tokenizer, max_words {MAX_WORDS}, batch_size {BATCH}; model dim "
          f"{PARAMS['dim']}, {PARAMS['n_layers']} layers, vocab 32000, --precision {args.precision}; "
          f"main_finetune.build() + Trainer._step, {args.rounds} rounds after {args.warmup} warm-up\n")
    rows = [[name, f"{fills[name]['fill']:.1%}", fills[name]["real_tokens_per_step"]] +
            [summaries[clock]["effective_tokens_per_s"][name] for clock in common.CLOCKS] for name in SIDES]
    common.print_table(["batches", "non-padding share (epoch)", "real tokens/step", "effective tokens/s (wall)",
                        "(CPU time / threads)"], rows)
    print()
    common.print_table(["ratio (median of paired rounds)", "wall", "CPU time / threads"],
                       [[key, *(f"{summaries[c]['ratios'][key]:.2f}x" for c in common.CLOCKS)]
                        for key in summaries["wall"]["ratios"]])
    print(f"\ntarget packed >= {TARGET}x padded (our padding, to the longest in the batch): "
          + ", ".join(f"{common.verdict(summaries[c]['target_met'])} ({c})" for c in common.CLOCKS))


if __name__ == "__main__":
    sys.exit(main())
