"""The demo's instruction data: three synthetic tasks a tiny model really learns in minutes
(copying, reversing and upper-casing four letters), as Alpaca records, plus a text corpus to train
its tokenizer on. Letters are written space-separated so each is one token, and words have a fixed
length so each answer token sits at a fixed distance from the input token it comes from.

    python tools/make_demo_data.py --out_dir .demo/data [--train 6000] [--heldout 60] [--seed 0]
writes train.json, heldout.json (records not in train.json) and corpus.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import string

from accessory.data.templates import PROMPT_FORMATS
from accessory.distributed.errors import run_entrypoint


TASKS = {
    "Repeat the letters.": lambda letters: letters,
    "Reverse the letters.": lambda letters: letters[::-1],
    "Change the letters to upper case.": lambda letters: [c.upper() for c in letters],
}


def make_record(rng: random.Random, length: int = 4) -> dict:
    instruction = rng.choice(sorted(TASKS))
    letters = [rng.choice(string.ascii_lowercase) for _ in range(length)]
    return {"instruction": instruction, "input": " ".join(letters), "output": " ".join(TASKS[instruction](letters))}


def make_demo_data(out_dir: str, n_train: int, n_heldout: int, seed: int) -> None:
    rng = random.Random(seed)
    heldout, seen = [], set()
    while len(heldout) < n_heldout:  # inputs never seen in training, in any task
        record = make_record(rng)
        if record["input"] not in seen:
            seen.add(record["input"])
            heldout.append(record)
    train = []
    while len(train) < n_train:
        record = make_record(rng)
        if record["input"] not in seen:
            train.append(record)
    os.makedirs(out_dir, exist_ok=True)
    for name, records in (("train.json", train), ("heldout.json", heldout)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(records, f, indent=1)
    alpaca = PROMPT_FORMATS["alpaca"]
    with open(os.path.join(out_dir, "corpus.txt"), "w") as f:
        for record in train[:2000]:
            f.write(f"{alpaca.with_input} {record['input']} {record['output']}\n")
            f.write(f"{alpaca.without_input} {record['instruction']}\n")
            f.write(" ".join(string.ascii_letters) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--heldout", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_demo_data(args.out_dir, args.train, args.heldout, args.seed)
    print(f"wrote {args.train} training and {args.heldout} held-out records to {args.out_dir}")


if __name__ == "__main__":
    run_entrypoint(main)
