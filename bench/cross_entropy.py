"""The loss over a large vocabulary: our fused, chunked output projection + cross-entropy
(`accessory.model.cross_entropy.linear_cross_entropy_sum`, what `MetaModel.forward` calls) against
what a plain loop does (`F.linear` to the full logits, then `F.cross_entropy`, as transformers'
`LlamaForCausalLM` computes its loss).

    python bench/cross_entropy.py [--quick] [--threads N]

Each side and vocabulary runs in its own process: forward + backward of the loss for 4096 tokens
(--quick: 1024) of hidden size 256, fp32, on Llama 2's (32000) and Llama 3's (128256) vocabulary.
Reported: the peak RSS of the first call above the RSS before it (logits, softmax and gradient
buffers; the inputs are allocated before), and the median seconds of three more calls. Both
processes keep freed host memory as the trainer does (accessory/train/host_memory.py), so the
timings compare compute rather than page faults.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

import common

NAME = "cross_entropy"
DIM, VOCABS = 256, (32000, 128256)
MIB = 1024 ** 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1024 tokens instead of 4096")
    p.add_argument("--threads", type=int, default=common.default_threads())
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # side, vocabulary, tokens
    return p.parse_args()


def worker(side: str, vocab: int, tokens: int) -> None:
    import torch
    import torch.nn.functional as F

    from accessory.model.cross_entropy import linear_cross_entropy_sum
    from accessory.train.host_memory import keep_freed_host_memory

    keep_freed_host_memory()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, DIM, generator=g).requires_grad_()
    weight = (torch.randn(vocab, DIM, generator=g) * DIM ** -0.5).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g)

    def loss_and_grads() -> float:
        if side == "ours":
            loss = linear_cross_entropy_sum(hidden, weight, targets)
        else:
            loss = F.cross_entropy(F.linear(hidden, weight), targets, reduction="sum")
        loss.backward()
        hidden.grad = weight.grad = None
        return loss.item()

    baseline_kib = common.proc_status_kib("VmRSS")
    common.reset_peak_rss()
    loss = loss_and_grads()
    peak_kib = common.proc_status_kib("VmHWM")
    seconds = []
    for _ in range(3):
        with common.Clock() as clock:
            loss_and_grads()
        seconds.append(clock.seconds["cpu"])
    print(json.dumps({"side": side, "vocab": vocab, "loss": loss, "peak_mib": (peak_kib - baseline_kib) / 1024,
                      "seconds": common.median(seconds)}), flush=True)


def main() -> None:
    args = parse_args()
    if args.worker:
        side, vocab, tokens = args.worker
        return worker(side, int(vocab), int(tokens))
    info = common.machine(threads=args.threads)
    common.print_machine(info)
    tokens = 1024 if args.quick else 4096
    results: List[Dict[str, Any]] = []
    for vocab in VOCABS:
        for side in ("ours", "plain"):
            run = common.run([__file__, "--worker", side, vocab, tokens], threads=args.threads)
            results.append(common.last_json_line(run.stdout))
            print(f"  {side} vocab {vocab}: {results[-1]}", flush=True)
    info["loadavg_end"] = common.loadavg()
    rows, ratios = [], {}
    for vocab in VOCABS:
        ours, plain = (next(r for r in results if r["side"] == s and r["vocab"] == vocab) for s in ("ours", "plain"))
        ratios[vocab] = {"memory plain / ours": plain["peak_mib"] / ours["peak_mib"],
                         "speed ours / plain": plain["seconds"] / ours["seconds"],
                         "loss difference": abs(ours["loss"] - plain["loss"]) / abs(plain["loss"])}
        logits_mib = tokens * vocab * 4 / MIB
        rows.append([vocab, f"{logits_mib:.0f}", f"{plain['peak_mib']:.0f}", f"{ours['peak_mib']:.0f}",
                     f"{ratios[vocab]['memory plain / ours']:.2f}x", f"{plain['seconds']:.3f}",
                     f"{ours['seconds']:.3f}", f"{ratios[vocab]['speed ours / plain']:.2f}x",
                     f"{ratios[vocab]['loss difference']:.1e}"])
    print()
    common.print_machine(info)
    print(f"loss + gradients of {tokens} tokens, hidden size {DIM}, fp32 (peak RSS above the inputs; CPU seconds / thread)\n")
    common.print_table(["vocab", "fp32 logits MiB", "plain peak MiB", "ours peak MiB", "memory plain/ours",
                        "plain s", "ours s", "speed ours/plain", "loss rel. diff"], rows)
    common.write_result(NAME, {"machine": info, "setup": {"tokens": tokens, "dim": DIM, "dtype": "fp32"},
                               "results": results, "ratios": ratios}, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
