"""Exact-match accuracy of a checkpoint's greedy answers on Alpaca-style records.

    python tools/evaluate.py --pretrained_path CKPT_DIR [DELTA_DIR] --data heldout.json [--show 5]

Prints a few questions with the model's answers, then `exact match: K/N (P%)`.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import accessory
from accessory.distributed import groups
from accessory.distributed.errors import run_entrypoint
from accessory.errors import AccessoryError
from accessory.generation import generate, instruction_prompt


def exact_match(model: accessory.api.MetaModel, records: list, show: int, max_new_tokens: int,
                prompt_type: str = "alpaca") -> float:
    correct = 0
    for index, record in enumerate(records):
        prompt = instruction_prompt(model.tokenizer, record["instruction"], record.get("input", ""), prompt_type)
        answer = generate(model, prompt, max_new_tokens=max_new_tokens, temperature=0.0).strip()
        correct += answer == record["output"].strip()
        if index < show and groups.is_main_process():
            mark = "ok " if answer == record["output"].strip() else "bad"
            print(f"  [{mark}] {record['instruction']} {record.get('input', '')!r:>16} -> {answer!r} "
                  f"(expected {record['output']!r})")
    return correct / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_path", nargs="+", required=True)
    parser.add_argument("--data", required=True, help="a JSON list of {instruction, input?, output}")
    parser.add_argument("--prompt_type", default="alpaca", help="the prompt template the model was finetuned with")
    parser.add_argument("--show", type=int, default=5, help="print this many examples")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--label", default="model", help="a name for the result line")
    args = parser.parse_args()
    if not os.path.isfile(args.data):
        raise AccessoryError(f"--data {args.data} does not exist")
    with open(args.data) as f:
        records = json.load(f)
    model = accessory.load(args.pretrained_path, model_parallel_size=int(os.environ.get("WORLD_SIZE", "1")),
                           device=groups.device())
    with torch.inference_mode():
        accuracy = exact_match(model, records, args.show, args.max_new_tokens, args.prompt_type)
    if groups.is_main_process():
        print(f"{args.label}: exact match {round(accuracy * len(records))}/{len(records)} ({accuracy:.0%})")


if __name__ == "__main__":
    run_entrypoint(main)
