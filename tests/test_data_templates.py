"""Prompt formats and conversation templates, checked with the real Llama 2 tokenizer on real records:
exactly the answers (with their end marker or EOS) are trained."""
import json

import pytest

from accessory.data import IGNORE_INDEX, DataArgs, build_finetune_data
from accessory.data.encode import encode_parts
from accessory.data.records import RawRecord, parse_conversation
from accessory.data.templates import (ACCESSORY_SYSTEM, DIALOG_TEMPLATES, LLAMA2_SYSTEM, VICUNA_SYSTEM, Part,
                                      render_record, render_text)
from accessory.errors import AccessoryError
from accessory.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(shared_data) -> Tokenizer:
    return Tokenizer(str(shared_data / "llama2-tokenizer.model"))


def trained_spans(ids: list[int], trained: list[bool]) -> list[list[int]]:
    """The runs of consecutive trained tokens."""
    spans: list[list[int]] = []
    for k, (token, is_trained) in enumerate(zip(ids, trained)):
        if is_trained:
            if k == 0 or not trained[k - 1]:
                spans.append([])
            spans[-1].append(token)
    return spans


def single_turn(record: dict, prompt_type: str = "alpaca") -> list[Part]:
    return render_record(RawRecord("test", record), dialog=False, prompt_type=prompt_type, template="accessory")


def test_alpaca_trained_tokens_are_exactly_the_answer_and_eos(shared_data, tokenizer):
    records = [r for r in json.loads((shared_data / "alpaca_5000.json").read_text()) if r["output"].strip()]
    with_input = sum(bool(r["input"].strip()) for r in records)
    assert 0 < with_input < len(records)  # both prompts are covered
    for record in records:
        parts = single_turn(record)
        ids, trained = encode_parts(parts, tokenizer)
        prompt_length = trained.index(True)
        assert all(trained[prompt_length:])
        answer = ids[prompt_length:]
        assert answer[-1] == tokenizer.eos_id and tokenizer.decode(answer[:-1]) == record["output"]
        assert ids[:prompt_length] == tokenizer.encode(parts[0].text, bos=True, eos=False)  # what inference feeds


def test_alpaca_prompts():
    no_input = single_turn({"instruction": "Add 2 and 3.", "input": " ", "output": "5"})[0].text
    assert no_input == ("Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:")
    with_input = single_turn({"instruction": "Add them.", "input": "2, 3", "output": "5"})[0].text
    assert with_input == ("Below is an instruction that describes a task, paired with an input that provides "
                          "further context. Write a response that appropriately completes the request.\n\n"
                          "### Instruction:\nAdd them.\n\n### Input:\n2, 3\n\n### Response:")
    short = single_turn({"instruction": "Add them.", "input": "2, 3", "output": "5"}, "alpaca_short")[0].text
    assert short == "### Instruction:\nAdd them.\n\n### Input:\n2, 3\n\n### Response:\n"
    raw = single_turn({"instruction": "Q: 2+3? A:", "input": "ignored", "output": "5"}, "None")
    assert [(p.text, p.trained) for p in raw] == [("Q: 2+3? A:", False), ("5", True)]


SMALL_DIALOG = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                                  {"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"}]}


@pytest.mark.parametrize("template, text", [
    ("accessory",
     f"{ACCESSORY_SYSTEM}\n\n### Human: Hi\n### Assistant: Hello!\n### Human: 2+2?\n### Assistant: 4\n###"),
    ("vicuna_v1.1", f"{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello! USER: 2+2? ASSISTANT: 4"),
    ("llama2_chat", f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\nHi [/INST] Hello!  [INST] 2+2? [/INST] 4 "),
])
def test_dialog_template_texts(template, text):
    parts = DIALOG_TEMPLATES[template](parse_conversation(RawRecord("test", SMALL_DIALOG)))
    assert render_text(parts) == text


def test_system_turn_replaces_the_default_system_prompt():
    record = {"conversations": [{"from": "system", "value": "Be brief."}, *SMALL_DIALOG["conversations"]]}
    conversation = parse_conversation(RawRecord("test", record))
    assert render_text(DIALOG_TEMPLATES["accessory"](conversation)).startswith("Be brief.\n\n### Human: Hi\n")
    assert render_text(DIALOG_TEMPLATES["llama2_chat"](conversation)).startswith(
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! ")


@pytest.mark.parametrize("template, trained_text, eos", [
    ("accessory", lambda answer: f"{answer}\n###", False),
    ("vicuna_v1.1", lambda answer: answer, True),
    ("llama2_chat", lambda answer: f"{answer.strip()} ", True),
])
def test_dialog_trains_exactly_the_assistant_turns(shared_data, tokenizer, template, trained_text, eos):
    records = json.loads((shared_data / "sharegpt_sample.json").read_text())
    assert max(len(r["conversations"]) for r in records) > 2  # a multi-turn dialog is covered
    for record in records:
        parts = DIALOG_TEMPLATES[template](parse_conversation(RawRecord("test", record)))
        ids, trained = encode_parts(parts, tokenizer)
        answers = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
        spans = trained_spans(ids, trained)
        assert len(spans) == len(answers)
        for span, answer in zip(spans, answers):
            assert span == tokenizer.encode(trained_text(answer), bos=False, eos=eos)
            assert tokenizer.decode(span) == trained_text(answer)


def test_accessory_dialog_tokens_equal_those_of_its_whole_text(shared_data, tokenizer):
    """Part boundaries fall before spaces, where SentencePiece splits anyway: the model sees the same
    tokens as a chat demo that encodes the whole conversation text."""
    for record in json.loads((shared_data / "sharegpt_sample.json").read_text()):
        parts = DIALOG_TEMPLATES["accessory"](parse_conversation(RawRecord("test", record)))
        ids, _ = encode_parts(parts, tokenizer)
        assert ids == tokenizer.encode(render_text(parts), bos=True, eos=False)


def test_real_alpaca_through_build_finetune_data(shared_data, tokenizer, tmp_path):
    data_config = tmp_path / "alpaca.yaml"
    data_config.write_text(f"META:\n  - path: {shared_data / 'alpaca_5000.json'}\n    type: text\n")
    args = DataArgs(str(data_config), max_words=1024, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(AccessoryError, match=r"alpaca_5000.json record 2335: field 'output' is empty"):
        build_finetune_data(args, tokenizer, log=lambda _: None)

    args.skip_bad_samples = True
    data = build_finetune_data(args, tokenizer, log=lambda _: None)
    outputs = [r["output"] for r in json.loads((shared_data / "alpaca_5000.json").read_text()) if r["output"]]
    answers = []
    for item in data.train:
        trained = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
        assert trained[-1] == tokenizer.eos_id
        answers.append(tokenizer.decode(trained[:-1]))
    assert sorted(answers) == sorted(outputs)
