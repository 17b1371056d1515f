"""Training throughput: our finetuning step against a plain Hugging Face transformers loop.

    python bench/train_throughput.py [--quick] [--threads N]

Both sides train the same LLaMA shape (dim 512, 8 layers, 8 heads, FFN 1536, vocab 32000 from the
Llama 2 tokenizer: 60M parameters) on batches of 4 rows x 256 tokens, every row full, in one process
with the same thread count:

- ours: the objects `accessory.main_finetune.build()` makes from the entrypoint's own flags
  (`--precision fp32|bf16 --batch_size 4 --max_words 256`, default `--data_parallel sdp`) on a random
  checkpoint from tools/make_random_checkpoint.py and Alpaca-format records long enough to be cut to
  256 tokens; each step is `Trainer._step` and its tokens/s is the trainer's own (metrics.jsonl).
- theirs: `LlamaForCausalLM` (SDPA attention) + `torch.optim.AdamW(betas=(0.9, 0.95))`: forward,
  backward, step, zero_grad, timed the same way. bf16 means autocast over fp32 weights on both sides
  (what HF Trainer's `bf16=True` does).

Building ours applies the trainer's CPU allocator setting (accessory/train/host_memory.py: freed
blocks are kept instead of page-faulted in anew every step). It is process-wide, so the
transformers loop, stepping in the same process, gets it too: the ratios are conservative.

The four (side, precision) pairs take turns step by step, in an order that flips every round, and a
short matmul peak is measured every round too, so that load from other users of the machine hits
all of them alike; medians over rounds are reported, warm-up rounds skipped. Every figure is given
twice: by wall clock (what the trainer reports) and by the process's CPU time / threads (the time
the step would take with its threads to itself, which other load barely moves: exact with
--threads 1). MFU is the model's training FLOP/s (6 x matmul parameters + PaLM's attention term
12 x layers x dim x seq, per token) over the best large-matmul rate measured (every round, same
precision and clock).

Unless --quick, the real entrypoint (`python -m accessory.main_finetune ... --max_steps N`) then runs
once per precision as a cross-check that the in-process figures are what a user gets (not interleaved,
so more exposed to load). Finally our step, and the transformers loop's for comparison, are
profiled (torch.profiler) into bench/results/train_profile.txt: self-CPU time by category, then the top ops.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import common

NAME = "train_throughput"
PARAMS = {"dim": 512, "n_layers": 8, "n_heads": 8, "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 2048}
VOCAB = 32000
BATCH, SEQ = 4, 256
SIDES = ["ours fp32", "hf fp32", "ours bf16", "hf bf16"]
TARGET_FP32_RATIO, TARGET_BF16_VS_FP32, TARGET_MFU = 1.0, 1.5, 0.85


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, no profile, no entrypoint cross-check")
    p.add_argument("--threads", type=int, default=common.default_threads())
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 10, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="rounds skipped first (default 2, quick 1)")
    p.add_argument("--no_profile", action="store_true")
    p.add_argument("--compile", action="store_true", help="our side with --compile (torch.compile per block)")
    args = p.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.no_profile = args.no_profile or args.quick
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    return args


# ----- inputs -------------------------------------------------------------------------------

def prepare_inputs(threads: int) -> Dict[str, Path]:
    work = common.work_dir(NAME)
    tokenizer = common.tokenizer_path(threads)
    params = common.write_params(work / "params.json", PARAMS)
    ckpt = common.random_checkpoint(work / "ckpt", params, tokenizer, threads)
    data = write_full_rows_data(work / "long_records.json", records=BATCH * 16)
    return {"tokenizer": tokenizer, "params": params, "ckpt": ckpt, "work": work,
            "data": common.data_yaml(work / "data.yaml", data)}


def write_full_rows_data(path: Path, records: int) -> Path:
    """Alpaca records whose answers run far past SEQ tokens: each is cut to exactly SEQ, so every row is full."""
    rng = random.Random(0)
    rows = [{"instruction": f"Continue the text number {i}.", "output": " ".join(common.synthetic_words(rng, 600))}
            for i in range(records)]
    path.write_text(json.dumps(rows))
    return path


def finetune_flags(inputs: Dict[str, Path], output_dir: Path, precision: str, max_steps: int,
                   compile_blocks: bool = False) -> List[str]:
    flags = ["--compile"] * compile_blocks + ["--output_dir", output_dir, "--llama_config", inputs["params"], "--tokenizer_path", inputs["tokenizer"],
             "--pretrained_path", inputs["ckpt"], "--data_config", inputs["data"], "--max_words", SEQ,
             "--batch_size", BATCH, "--max_steps", max_steps, "--precision", precision, "--num_workers", 0,
             "--lr", 1e-5, "--cache_dir", inputs["work"] / "cache"]
    return [str(f) for f in flags]


# ----- the sides: each a callable doing one training step and returning its tokens/s ----------

class OurSide:
    """`main_finetune.build()` from the entrypoint's flags; steps through `Trainer._step`."""

    def __init__(self, inputs: Dict[str, Path], precision: str, compile_blocks: bool):
        output_dir = inputs["work"] / f"inproc_{precision}"
        shutil.rmtree(output_dir, ignore_errors=True)
        self.entry = common.EntrypointTrainer(finetune_flags(inputs, output_dir, precision, 10**6, compile_blocks))

    def __call__(self) -> Dict[str, float]:
        micro = self.entry.next_batches()  # outside the timing, as in the trainer's loop
        with common.Clock() as clock:
            record = self.entry.step(micro)
        if record["tokens"] != BATCH * SEQ:
            raise RuntimeError(f"rows are not all full: {record['tokens']} tokens in a step")
        return {"wall": record["tokens_per_s"], "cpu": record["tokens"] / clock.seconds["cpu"]}

    def close(self) -> None:
        self.entry.close()
        shutil.rmtree(self.entry.output_dir, ignore_errors=True)


class HFSide:
    """A plain transformers loop: LlamaForCausalLM + torch.optim.AdamW."""

    def __init__(self, precision: str):
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        self.model = LlamaForCausalLM(hf_config()).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, betas=(0.9, 0.95))
        self.tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
        self.bf16 = precision == "bf16"

    def __call__(self) -> Dict[str, float]:
        import torch

        with common.Clock() as clock:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()
        return {key: self.tokens.numel() / seconds for key, seconds in clock.seconds.items()}

    def close(self) -> None:
        pass


def hf_config():
    from transformers import LlamaConfig

    a = model_args()
    return LlamaConfig(vocab_size=VOCAB, hidden_size=a.dim, intermediate_size=a.ffn_hidden_dim,
                       num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads,
                       rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, max_position_embeddings=a.max_seq_len,
                       tie_word_embeddings=False, attn_implementation="sdpa")


# ----- FLOPs --------------------------------------------------------------------------------

def model_args():
    from accessory.model.llama import ModelArgs

    return ModelArgs(**PARAMS, vocab_size=VOCAB)


def model_counts() -> Dict[str, int]:
    """Parameters, and those in matmuls (all but the embedding table and the norms)."""
    a = model_args()
    per_layer = 2 * a.dim * a.n_heads * a.head_dim + 2 * a.dim * a.kv_heads * a.head_dim + 3 * a.dim * a.ffn_hidden_dim
    matmul = a.n_layers * per_layer + a.dim * VOCAB
    return {"params": matmul + a.dim * VOCAB + (2 * a.n_layers + 1) * a.dim, "matmul_params": matmul}


def flops_per_token() -> float:
    return 6 * model_counts()["matmul_params"] + 12 * PARAMS["n_layers"] * PARAMS["dim"] * SEQ


# ----- measurement --------------------------------------------------------------------------

Series = Dict[str, List[Dict[str, float]]]  # side or peak -> per round {"wall": .., "cpu": ..}
CLOCKS = common.CLOCKS


def interleave(sides: Dict[str, Callable[[], Dict[str, float]]], rounds: int, warmup: int) -> Series:
    """One step of every side per round (order flipped every round) plus the matmul peaks; warm-up dropped."""
    series: Series = {name: [] for name in [*sides, "peak fp32", "peak bf16"]}
    names = list(sides)
    for r in range(warmup + rounds):
        order = names if r % 2 == 0 else names[::-1]
        values = {name: sides[name]() for name in order}
        values["peak fp32"] = common.matmul_peak("fp32", size=3072, repeats=3)
        values["peak bf16"] = common.matmul_peak("bf16", size=3072, repeats=3)
        label = "warm-up" if r < warmup else f"round {r - warmup + 1}/{rounds}"
        print(f"  {label:<13} tokens/s wall (cpu): " +
              "  ".join(f"{n} {values[n]['wall']:.0f} ({values[n]['cpu']:.0f})" for n in names), flush=True)
        if r >= warmup:
            for name, value in values.items():
                series[name].append(value)
    return series


def summarize(series: Series, clock: str) -> Dict[str, Any]:
    """Medians; ratios from each round's own figures (paired), then the median over rounds; MFU
    against the best matmul peak of all rounds (the peak this machine reached)."""
    fpt = flops_per_token()
    rounds = range(len(series[SIDES[0]]))

    def at(name: str, i: int) -> float:
        return series[name][i][clock]

    def paired(f: Callable[[int], float]) -> float:
        return common.median([f(i) for i in rounds])

    tps = {name: common.median([at(name, i) for i in rounds]) for name in SIDES}
    peaks = {name: max(at(name, i) for i in rounds) for name in ("peak fp32", "peak bf16")}
    mfu = {name: tps[name] * fpt / peaks[f"peak {name.split()[1]}"] for name in SIDES}
    ratios = {f"{a} / {b}": paired(lambda i, a=a, b=b: at(a, i) / at(b, i))
              for a, b in [("ours fp32", "hf fp32"), ("ours bf16", "hf fp32"), ("ours bf16", "hf bf16"),
                           ("ours bf16", "ours fp32"), ("hf bf16", "hf fp32")]}
    targets = {
        f"ours fp32 >= {TARGET_FP32_RATIO}x hf fp32": ratios["ours fp32 / hf fp32"] >= TARGET_FP32_RATIO,
        f"ours bf16 >= {TARGET_BF16_VS_FP32}x hf fp32": ratios["ours bf16 / hf fp32"] >= TARGET_BF16_VS_FP32,
        f"ours fp32 MFU >= {TARGET_MFU:.0%} of the fp32 matmul peak": mfu["ours fp32"] >= TARGET_MFU,
    }
    return {"tokens_per_s": tps, "mfu": mfu, "ratios": ratios, "targets": targets, "matmul_peak_flops": peaks}


def entrypoint_check(inputs: Dict[str, Path], threads: int, steps: int = 6, warmup: int = 2) -> Dict[str, float]:
    """Median tokens/s of `python -m accessory.main_finetune --max_steps N` per precision, from metrics.jsonl."""
    result = {}
    for precision in ("fp32", "bf16"):
        output_dir = inputs["work"] / f"entrypoint_{precision}"
        shutil.rmtree(output_dir, ignore_errors=True)
        common.run(["-m", "accessory.main_finetune", *finetune_flags(inputs, output_dir, precision, steps)], threads)
        rates = [m["tokens_per_s"] for m in common.read_metrics(output_dir)]
        shutil.rmtree(output_dir)  # the final checkpoint is large and not needed
        result[f"ours {precision}"] = common.median(rates[warmup:])
        print(f"  entrypoint --precision {precision}: steps {', '.join(f'{r:.0f}' for r in rates)} tokens/s",
              flush=True)
    return result


# ----- the profile --------------------------------------------------------------------------

CATEGORIES = [  # (category, substrings of op names), first match wins
    ("optimizer (AdamW)", ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "optimizer")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn")),
    ("attention (SDPA kernels)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("cross-entropy (log_softmax, nll)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("dtype copies / casts", ("aten::copy_", "aten::_to_copy", "aten::to", "clone")),
    ("reductions (norms, grad-norm)", ("aten::pow", "aten::sum", "aten::mean", "linalg_vector_norm", "rsqrt")),
    ("elementwise (RoPE, SiLU, residual, scaling)", ("aten::mul", "aten::add", "aten::sub", "aten::silu",
                                                     "aten::stack", "aten::cat", "aten::div", "aten::cos", "aten::sin",
                                                     "aten::neg", "aten::where", "aten::fill_", "aten::zero")),
    ("embedding", ("embedding",)),
    ("FSDP / DTensor / collectives", ("fsdp", "dtensor", "c10d", "gloo", "all_gather", "reduce_scatter")),
]


def profile_ours(sides: Dict[str, Callable[[], float]], steps: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile

    sections = []
    for name in SIDES:  # ours, then the reference loop for comparison
        sides[name]()  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                sides[name]()
        sections.append(profile_section(prof, name, steps))
    return "\n\n".join(sections) + "\n"


def profile_section(prof, name: str, steps: int) -> str:
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_category: Dict[str, float] = {}
    for e in events:
        by_category[category(e.key)] = by_category.get(category(e.key), 0.0) + e.self_cpu_time_total
    how = "Trainer._step from main_finetune.build()" if name.startswith("ours") else "the transformers loop"
    lines = [f"== {name}: {how}, {steps} steps of {BATCH}x{SEQ} tokens; "
             f"self CPU time {total / 1e6 / steps:.2f} s per step ==", "", "self CPU time by category (op-name based):"]
    for label, micros in sorted(by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {label:<45} {micros / 1e6 / steps:7.3f} s/step  {micros / total:6.1%}")
    lines += ["", prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=55)]
    return "\n".join(lines)


def category(op: str) -> str:
    name = op.lower()
    for label, needles in CATEGORIES:
        if any(n.lower() in name for n in needles):
            return label
    return "other"


# ----- report -------------------------------------------------------------------------------

def report(info: Dict[str, Any], summaries: Dict[str, Dict[str, Any]], check: Dict[str, float],
           args: argparse.Namespace) -> None:
    counts = model_counts()
    print()
    common.print_machine(info)
    print(f"model: dim {PARAMS['dim']}, {PARAMS['n_layers']} layers, {PARAMS['n_heads']} heads, vocab {VOCAB}: "
          f"{counts['params'] / 1e6:.1f}M parameters ({counts['matmul_params'] / 1e6:.1f}M in matmuls); batch "
          f"{BATCH}x{SEQ}, all rows full; {args.rounds} interleaved rounds after {args.warmup} warm-up")
    print("ours: objects from accessory.main_finetune.build() + Trainer._step (wall tokens/s from its metrics.jsonl); "
          "hf: LlamaForCausalLM(sdpa) + torch.optim.AdamW; bf16 = autocast on both")
    for clock, summary in summaries.items():
        peaks = summary["matmul_peak_flops"]
        print(f"\n-- {CLOCKS[clock]}; best matmul fp32 {peaks['peak fp32'] / 1e9:.0f}, "
              f"bf16 {peaks['peak bf16'] / 1e9:.0f} GFLOP/s ({args.threads} threads)")
        with_check = clock == "wall" and bool(check)
        rows = [[name, summary["tokens_per_s"][name], f"{summary['mfu'][name]:.1%}"] +
                ([f"{check[name]:.0f}" if name in check else ""] if with_check else []) for name in SIDES]
        common.print_table(["side precision", "tokens/s", "MFU vs same-precision peak"] +
                           (["entrypoint run tokens/s"] if with_check else []), rows)
        print()
        common.print_table(["ratio (paired per round)", "median"],
                           [[k, f"{v:.2f}x"] for k, v in summary["ratios"].items()])
        print()
        common.print_table(["target", "result"], [[k, common.verdict(v)] for k, v in summary["targets"].items()])


def main() -> None:
    args = parse_args()
    common.set_threads(args.threads)
    info = common.machine(args.threads)
    common.print_machine(info)
    inputs = prepare_inputs(args.threads)
    sides: Dict[str, Any] = {name: (OurSide(inputs, name.split()[1], args.compile) if name.startswith("ours")
                                    else HFSide(name.split()[1])) for name in SIDES}
    series = interleave(sides, args.rounds, args.warmup)
    summaries = {clock: summarize(series, clock) for clock in CLOCKS}
    if not args.no_profile:
        out = common.RESULTS / "train_profile.txt"
        common.RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(f"{info}\n\n" + profile_ours(sides))
        print(f"wrote {out.relative_to(common.REPO)}")
    for side in sides.values():
        side.close()
    check = {} if args.quick else entrypoint_check(inputs, args.threads)
    info["loadavg_end"] = common.loadavg()
    report(info, summaries, check, args)
    common.write_result(NAME + "_compile" * args.compile, {
        "machine": info,
        "setup": {"params": PARAMS, "vocab_size": VOCAB, "batch": BATCH, "seq": SEQ, **model_counts(),
                  "rounds": args.rounds, "warmup_rounds": args.warmup, "flops_per_token": flops_per_token(),
                  "ours": "accessory.main_finetune.build() + Trainer._step, tokens_per_s from metrics.jsonl",
                  "ours_compile": args.compile,
                  "hf": "LlamaForCausalLM(sdpa) + torch.optim.AdamW(betas 0.9/0.95); bf16 = autocast on both"},
        "clocks": CLOCKS, **summaries, "entrypoint_run_tokens_per_s": check,
        "rounds": {name: {clock: [v[clock] for v in values] for clock in CLOCKS} for name, values in series.items()}},
        quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
