"""Bad inputs to loading give one clear line naming the culprit, a non-zero exit and no traceback,
through the tools a user runs (tools/generate.py here)."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import make_checkpoint
from helpers import run_python


@pytest.fixture(scope="module")
def good(tiny_dir, tmp_path_factory):
    return make_checkpoint(tiny_dir, tmp_path_factory.mktemp("errors") / "good", "consolidated", 1)


def _fails(args, *expected):
    result = run_python(["tools/generate.py", "--prompt", "hi", "--max_new_tokens", 1, *args], check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert str(text) in lines[0], lines[0]
    return lines[0]


def test_missing_directory(tmp_path):
    _fails(["--pretrained_path", tmp_path / "nope"], tmp_path / "nope", "does not exist")


def test_directory_without_shards(good, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(good / "params.json", empty)
    shutil.copy(good / "tokenizer.model", empty)
    _fails(["--pretrained_path", empty], empty, "no checkpoint shards")


def test_truncated_file(good, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    shard = broken / "consolidated.00-of-01.model.pth"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _fails(["--pretrained_path", broken], shard, "truncated or corrupt")


def test_wrong_shapes(good, tiny_dir, tmp_path):
    config = tmp_path / "wider.json"
    config.write_text(json.dumps({**json.loads((tiny_dir / "params.json").read_text()), "dim": 240, "n_heads": 30,
                                  "n_kv_heads": 15}))
    _fails(["--pretrained_path", good, "--llama_config", config], "tok_embeddings.weight", "(576, 192)", "(576, 240)")


def test_unknown_config_key(good, tiny_dir, tmp_path):
    config = tmp_path / "typo.json"
    config.write_text(json.dumps({"n_layer": 3}))
    _fails(["--pretrained_path", good, "--llama_config", tiny_dir / "params.json", config],
           config, "'n_layer'", "n_layers")


def test_vocabulary_mismatch(good, tiny_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((tiny_dir / "corpus.txt").read_text()[:200000])
    run_python(["tools/train_tokenizer.py", "--input", corpus, "--vocab_size", 480, "--output", tmp_path / "t.model"])
    # the checkpoint's config.json records its vocabulary: caught before loading
    _fails(["--pretrained_path", good, "--tokenizer_path", tmp_path / "t.model"], "vocab_size=576", "480 tokens")
    # a Meta params.json leaves it to the tokenizer (-1): caught at the embedding rows
    _fails(["--pretrained_path", good, "--tokenizer_path", tmp_path / "t.model", "--llama_config",
            tiny_dir / "params.json"], "tokenizer", "(576, 192)", "(480, 192)")


def test_model_parallel_not_dividing_heads(good, tiny_dir, tiny_data, tmp_path):
    result = run_python(["-m", "accessory.main_finetune", "--model_parallel_size", 5, "--pretrained_path", good,
                         "--llama_config", tiny_dir / "params.json", "--tokenizer_path", tiny_dir / "tokenizer.model",
                         "--data_config", tiny_data, "--output_dir", tmp_path], check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: model_parallel_size=5 does not divide n_heads=24: "
                                     "choose a model-parallel size that divides it")
