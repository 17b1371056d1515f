"""Generation: the KV-cache path gives exactly what full forwards give, and tools/generate.py
works as a user runs it, in one-prompt and chat mode, at MP 1 and under a 2-process torchrun (MP 2)."""
from __future__ import annotations

import pytest
import torch

import accessory
from accessory.generation import dialog_prompt, generate, instruction_prompt
from conftest import make_checkpoint
from helpers import run_python, torchrun


@pytest.fixture(scope="module")
def ckpt(tiny_dir, tmp_path_factory):
    return make_checkpoint(tiny_dir, tmp_path_factory.mktemp("generate") / "ckpt", "consolidated", 1, seed=5)


def test_kv_cache_matches_full_forwards(ckpt):
    model = accessory.load(str(ckpt))
    prompt = instruction_prompt(model.tokenizer, "Reverse this word.", "hello")
    streamed = []
    text = generate(model, prompt, max_new_tokens=12, temperature=0.0, on_text=streamed.append)
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            next_token = int(model.llma(torch.tensor([tokens]))[0, -1].argmax())
            if next_token == model.tokenizer.eos_id:
                break
            tokens.append(next_token)
    assert text == model.tokenizer.decode(tokens[len(prompt):])
    assert "".join(streamed) == text


def test_sampling_is_seeded(ckpt):
    model = accessory.load(str(ckpt))
    prompt = dialog_prompt(model.tokenizer, [("human", "hello world")])
    runs = [generate(model, prompt, max_new_tokens=10, temperature=1.0, top_p=0.9,
                     generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_generate_tool_prompt_chat_and_tensor_parallel(ckpt):
    flags = ["--pretrained_path", ckpt, "--max_new_tokens", 8, "--temperature", 0]
    single = run_python(["tools/generate.py", *flags, "--prompt", "Add the numbers 2 and 3."]).stdout
    parallel = torchrun(2, ["tools/generate.py", *flags, "--prompt", "Add the numbers 2 and 3."]).stdout
    assert single.strip() and single == parallel
    chat = run_python(["tools/generate.py", *flags, "--chat"], input="hello there\nand again\n\n").stdout
    assert chat.count("human> ") == 3 and chat.count("assistant> ") == 2
