"""Fixtures: a tiny tokenizer, tiny model configs and random checkpoints, built once per session
with the repo's own tools."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import SHARED_DATA, run_python

# GQA, rope_theta != 10000, and every split whole at MP 1, 2, 3, 4 (heads, kv heads, dim, FFN, vocab).
TINY_PARAMS = {"dim": 192, "n_layers": 2, "n_heads": 24, "n_kv_heads": 12, "multiple_of": 24,
               "norm_eps": 1e-5, "rope_theta": 500000.0, "max_seq_len": 256}
TINY_VOCAB = 576
ALPACA_TEXT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.\n\n### Instruction:\n\n### Input:\n\n"
               "### Response:\nBelow is an instruction that describes a task. Write a response that appropriately "
               "completes the request.\n")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """tokenizer.model (a 576-token SentencePiece model) and params.json."""
    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    words = ("the quick brown fox jumps over a lazy dog reverse this word add the numbers make it upper "
             "lower case hello world answer question instruction response input output").split()
    with open(root / "corpus.txt", "w") as f:
        for _ in range(200):  # the Alpaca prompts, so that they tokenize compactly
            f.write(ALPACA_TEXT)
        for _ in range(3000):
            f.write(" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 999)} ABC xyz.\n")
    run_python(["tools/train_tokenizer.py", "--input", root / "corpus.txt", "--vocab_size", TINY_VOCAB,
                "--output", root / "tokenizer.model"])
    (root / "params.json").write_text(json.dumps(TINY_PARAMS))
    return root


def make_checkpoint(tiny_dir: Path, dst: Path, fmt: str = "consolidated", mp: int = 1, seed: int = 0) -> Path:
    if not dst.exists():
        run_python(["tools/make_random_checkpoint.py", "--llama_config", tiny_dir / "params.json",
                    "--tokenizer_path", tiny_dir / "tokenizer.model", "--dst", dst, "--format", fmt,
                    "--model_parallel_size", mp, "--seed", seed])
    return dst


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_config YAML over 96 synthetic Alpaca-style records (with and without input)."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = random.Random(1)
    words = ["hello", "world", "quick", "brown", "fox", "lazy", "dog", "answer"]
    records = []
    for i in range(96):
        word = rng.choice(words)
        if i % 2:
            records.append({"instruction": "Reverse this word.", "input": word, "output": word[::-1]})
        else:
            a, b = rng.randint(0, 50), rng.randint(0, 49)
            records.append({"instruction": f"Add the numbers {a} and {b}.", "output": str(a + b)})
    (root / "train.json").write_text(json.dumps(records))
    (root / "data.yaml").write_text("META:\n  - path: train.json\n    type: text\n")
    return root / "data.yaml"
