"""build_finetune_data on small files: bad data, truncation, the tokenization cache, ratios, validation
and packing. A byte-level tokenizer stands in for a SentencePiece model."""
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from accessory.data import IGNORE_INDEX, DataArgs, build_finetune_data
from accessory.errors import AccessoryError


class ByteTokenizer:
    """UTF-8 bytes as tokens 3..258, BOS 1, EOS 2; counts its encode calls."""

    bos_id, eos_id, n_words = 1, 2, 259

    def __init__(self, path: Path):
        path.write_text("byte tokenizer")
        self.path = str(path)
        self.calls = 0

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        self.calls += 1
        return [self.bos_id] * bos + [b + 3 for b in s.encode()] + [self.eos_id] * eos

    def decode(self, ids) -> str:
        return bytes(i - 3 for i in ids if i > 2).decode()


@pytest.fixture
def tokenizer(tmp_path) -> ByteTokenizer:
    return ByteTokenizer(tmp_path / "tokenizer.model")


def records(n: int, prefix: str = "a") -> list[dict]:
    return [{"instruction": f"q{k}", "output": f"{prefix}{k}"} for k in range(n)]


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def config(tmp_path: Path, *entries: str, val: tuple[str, ...] = ()) -> str:
    text = "META:\n" + "".join(f"  - {e}\n" for e in entries)
    if val:
        text += "VAL:\n" + "".join(f"  - {e}\n" for e in val)
    return str(write(tmp_path / "data.yaml", text))


def build(tmp_path: Path, tokenizer, data_config: str, **kwargs):
    logs: list[str] = []
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    data = build_finetune_data(DataArgs(data_config, **kwargs), tokenizer, log=logs.append)
    return data, logs


def answers(dataset, tokenizer) -> list[str]:
    """The trained text of each item, EOS left out."""
    return [tokenizer.decode(item["labels"][item["labels"] != IGNORE_INDEX].tolist()) for item in dataset]


# --- bad data -----------------------------------------------------------------------------------

BAD_SINGLE_TURN = [
    ({"instruction": "q"}, "field 'output' is missing"),
    ({"instruction": "q", "output": "  "}, "field 'output' is empty"),
    ({"instruction": "q", "output": 5}, "field 'output' must be a string"),
    ({"instruction": ["q"], "output": "a"}, "field 'instruction' must be a string"),
    ({"output": "a"}, "field 'instruction' is missing"),
    ({"instruction": "q", "input": 3, "output": "a"}, "field 'input' must be a string"),
    (["q", "a"], "expected an object"),
]
BAD_DIALOG = [
    ({"id": 1}, "field 'conversations' is missing"),
    ({"conversations": []}, "field 'conversations' is empty"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "field 'conversations' has no assistant turn"),
    ({"conversations": [{"from": "bot", "value": "hi"}]}, "field 'conversations[0].from' is 'bot'"),
    ({"conversations": [{"from": "gpt", "value": 1}]}, "field 'conversations[0].value' must be a string"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "system", "value": "s"}]},
     "field 'conversations[1]' is a system turn"),
]


@pytest.mark.parametrize("bad, message", BAD_SINGLE_TURN)
def test_bad_single_turn_record_stops_with_file_index_and_field(tmp_path, tokenizer, bad, message):
    data_file = write(tmp_path / "d.json", [*records(2), bad])
    with pytest.raises(AccessoryError) as error:
        build(tmp_path, tokenizer, config(tmp_path, f"path: {data_file}"))
    assert str(error.value).startswith(f"{data_file} record 2: {message}")
    assert "skip_bad_samples" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("bad, message", BAD_DIALOG)
def test_bad_dialog_record_stops_with_file_index_and_field(tmp_path, tokenizer, bad, message):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    data_file = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in [good, bad]) + "\n")
    with pytest.raises(AccessoryError) as error:
        build(tmp_path, tokenizer, config(tmp_path, f"path: {data_file}"), dialog=True)
    assert str(error.value).startswith(f"{data_file} record 1 (line 2): {message}")


def test_llama2_chat_needs_alternating_turns(tmp_path, tokenizer):
    bad = {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}
    data_file = write(tmp_path / "d.json", [bad])
    with pytest.raises(AccessoryError, match=r"record 0: field 'conversations' has turns assistant, user; "
                                             r"llama2_chat needs"):
        build(tmp_path, tokenizer, config(tmp_path, f"{{path: {data_file}, template: llama2_chat}}"), dialog=True)


def test_invalid_json_names_the_line(tmp_path, tokenizer):
    json_file = write(tmp_path / "d.json", '[\n{"instruction": "q", "output": "a"},\n{"instruction": }\n]')
    with pytest.raises(AccessoryError, match=rf"^{json_file}: invalid JSON at line 3 column 17"):
        build(tmp_path, tokenizer, config(tmp_path, f"path: {json_file}"))
    jsonl_file = write(tmp_path / "d.jsonl", '{"instruction": "q", "output": "a"}\n\n{"instruction": "q",\n')
    with pytest.raises(AccessoryError, match=rf"^{jsonl_file} record 1 \(line 3\): invalid JSON"):
        build(tmp_path, tokenizer, config(tmp_path, f"path: {jsonl_file}"))


@pytest.mark.parametrize("content", ["[]", "\n", json.dumps({"instruction": "q", "output": "a"})])
def test_empty_or_malformed_file(tmp_path, tokenizer, content):
    data_file = write(tmp_path / "d.json", content)
    with pytest.raises(AccessoryError, match=rf"^{data_file}: "):
        build(tmp_path, tokenizer, config(tmp_path, f"path: {data_file}"))


def test_skip_bad_samples_counts_per_file_and_substitutes_nothing(tmp_path, tokenizer):
    first = write(tmp_path / "first.json", [*records(3), {"instruction": "q"}, {"output": "x"}])
    second = write(tmp_path / "second.jsonl", "\n".join([json.dumps(records(1, "b")[0]), "{oops"]))
    data, logs = build(tmp_path, tokenizer, config(tmp_path, f"path: {first}", f"path: {second}"),
                       skip_bad_samples=True)
    assert sorted(answers(data.train, tokenizer)) == ["a0", "a1", "a2", "b0"]
    assert any(line.startswith(f"{first}: 5 records -> 3 samples") and "2 bad records skipped (first: "
               f"{first} record 3: field 'output' is missing" in line for line in logs)
    assert any(line.startswith(f"{second}: 2 records -> 1 samples") and "1 bad records skipped" in line
               for line in logs)


# --- truncation ---------------------------------------------------------------------------------

def test_truncation_keeps_the_prompt_and_drops_samples_whose_prompt_fills_max_words(tmp_path, tokenizer):
    # Prompt "None" is the raw instruction: BOS + 3 bytes; the answer is its bytes + EOS.
    data_file = write(tmp_path / "d.json", [{"instruction": "abc", "output": "1234"},     # 9 tokens: kept
                                            {"instruction": "abc", "output": "12345678"},  # truncated
                                            {"instruction": "abcdefghij", "output": "1"}])  # dropped
    data, logs = build(tmp_path, tokenizer, config(tmp_path, f"{{path: {data_file}, prompt_type: None}}"),
                       max_words=9)
    assert sorted(answers(data.train, tokenizer)) == ["1234", "12345"]
    assert all(len(item["tokens"]) <= 9 for item in data.train)
    report = [line for line in logs if "truncated" in line]
    assert report == [f"{data_file}: 3 records -> 2 samples; 1 truncated to max_words=9, 1 dropped (prompt alone "
                      "reaches max_words)"]


# --- cache --------------------------------------------------------------------------------------

def test_cache_is_reused_until_an_input_changes(tmp_path, tokenizer):
    data_file = write(tmp_path / "d.json", records(4))
    data_config = config(tmp_path, f"path: {data_file}")
    first, logs = build(tmp_path, tokenizer, data_config)
    assert any(line.startswith("tokenizing into") for line in logs)
    calls = tokenizer.calls
    again, logs = build(tmp_path, tokenizer, data_config)
    assert tokenizer.calls == calls and any(line.startswith("tokenized cache") for line in logs)
    assert answers(again.train, tokenizer) == answers(first.train, tokenizer)

    write(data_file, records(4, prefix="z"))
    changed, logs = build(tmp_path, tokenizer, data_config)
    assert tokenizer.calls > calls and any(line.startswith("tokenizing into") for line in logs)
    assert sorted(answers(changed.train, tokenizer)) == ["z0", "z1", "z2", "z3"]
    _, logs = build(tmp_path, tokenizer, data_config, max_words=256)
    assert any(line.startswith("tokenizing into") for line in logs)

    cache_files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cache_files) == 3
    assert set(torch.load(cache_files[0], weights_only=True)) == {"tokens", "trained", "offsets", "stats"}


def test_other_ranks_wait_for_local_rank_0(tmp_path, tokenizer):
    data_config = config(tmp_path, f"path: {write(tmp_path / 'd.json', records(3))}")
    args = DataArgs(data_config, cache_dir=str(tmp_path / "cache"), cache_timeout_s=0.2)
    with pytest.raises(AccessoryError, match=r"timed out after 0.2 s waiting for local rank 0 .*cache_timeout_s"):
        build_finetune_data(args, tokenizer, local_rank=1, log=lambda _: None)

    args.cache_timeout_s = 60
    results = {}
    waiter = threading.Thread(target=lambda: results.update(
        rank1=build_finetune_data(args, tokenizer, local_rank=1, log=lambda _: None)))
    waiter.start()
    rank0 = build_finetune_data(args, tokenizer, local_rank=0, log=lambda _: None)
    waiter.join(timeout=60)
    assert answers(results["rank1"].train, tokenizer) == answers(rank0.train, tokenizer)


# --- ratio and validation -----------------------------------------------------------------------

def test_ratio_subsamples_and_repeats(tmp_path, tokenizer):
    small = write(tmp_path / "small.json", records(10, "s"))
    large = write(tmp_path / "large.json", records(10, "l"))
    data, _ = build(tmp_path, tokenizer, config(tmp_path, f"{{path: {small}, ratio: 0.5}}",
                                                f"{{path: {large}, ratio: 2.5}}"))
    counts = Counter(answers(data.train, tokenizer))
    small_counts = [c for a, c in counts.items() if a.startswith("s")]
    large_counts = [c for a, c in counts.items() if a.startswith("l")]
    assert len(small_counts) == 5 and set(small_counts) == {1}
    assert sum(large_counts) == 25 and len(large_counts) == 10 and set(large_counts) == {2, 3}
    again, _ = build(tmp_path, tokenizer, config(tmp_path, f"{{path: {small}, ratio: 0.5}}",
                                                 f"{{path: {large}, ratio: 2.5}}"))
    assert answers(again.train, tokenizer) == answers(data.train, tokenizer)


def test_val_ratio_holds_out_a_fraction_of_each_group(tmp_path, tokenizer):
    text = write(tmp_path / "text.json", records(20, "t"))
    chat = write(tmp_path / "chat.json", records(10, "c"))
    data_config = config(tmp_path, f"{{path: {text}, type: text, ratio: 2}}", f"{{path: {chat}, type: chat}}")
    data, _ = build(tmp_path, tokenizer, data_config, val_ratio=0.2)
    val = answers(data.val, tokenizer)
    assert len(val) == 6 and sum(a.startswith("t") for a in val) == 4
    train = answers(data.train, tokenizer)
    assert not set(val) & set(train) and len(train) == 2 * 16 + 8
    again, _ = build(tmp_path, tokenizer, data_config, val_ratio=0.2)
    assert answers(again.val, tokenizer) == val
    assert build(tmp_path, tokenizer, data_config)[0].val is None


def test_val_list(tmp_path, tokenizer):
    train_file, val_file = write(tmp_path / "t.json", records(4, "t")), write(tmp_path / "v.json", records(3, "v"))
    data_config = config(tmp_path, f"path: {train_file}", val=(f"path: {val_file}",))
    data, _ = build(tmp_path, tokenizer, data_config)
    assert sorted(answers(data.val, tokenizer)) == ["v0", "v1", "v2"]
    assert sorted(answers(data.train, tokenizer)) == ["t0", "t1", "t2", "t3"]
    with pytest.raises(AccessoryError, match="has a VAL list and val_ratio is 0.5; use one of them"):
        build(tmp_path, tokenizer, data_config, val_ratio=0.5)


# --- packing ------------------------------------------------------------------------------------

def test_packed_rows_fit_max_words_and_never_mix_groups(tmp_path, tokenizer):
    text = write(tmp_path / "text.json", [{"instruction": "q" * (k % 7), "output": f"t{k}"} for k in range(40)])
    chat = write(tmp_path / "chat.json", [{"instruction": "q" * (k % 5), "output": f"c{k}"} for k in range(30)])
    data_config = config(tmp_path, f"{{path: {text}, type: text, prompt_type: None}}",
                         f"{{path: {chat}, type: chat, prompt_type: None}}")
    unpacked, _ = build(tmp_path, tokenizer, data_config, max_words=32)
    packed, logs = build(tmp_path, tokenizer, data_config, max_words=32, packing=True)
    assert any(line.startswith("packed 70 samples into") for line in logs)
    assert len(packed.train) < len(unpacked.train)
    for index, row in enumerate(packed.train):
        assert len(row["tokens"]) <= 32
        segments = row["segment_ids"].unique_consecutive()
        assert segments.tolist() == list(range(1, len(segments) + 1))
        starts = torch.nonzero(row["positions"] == 0).flatten()
        assert (row["segment_ids"][starts] == segments).all() and (row["labels"][starts] == IGNORE_INDEX).all()
        group = packed.train.group_names[int(packed.train.groups[index])]
        assert {answer[0] for answer in split_answers(row, tokenizer)} == {group[0]}  # "t.." or "c.." answers
    assert sorted(answers(unpacked.train, tokenizer)) == sorted(
        a for row in packed.train for a in split_answers(row, tokenizer))


def split_answers(row: dict, tokenizer) -> list[str]:
    return [tokenizer.decode(row["labels"][(row["segment_ids"] == s) & (row["labels"] != IGNORE_INDEX)].tolist())
            for s in row["segment_ids"].unique().tolist()]
