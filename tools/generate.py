"""Generate with a finetuned (or any) checkpoint, streaming tokens as they come.

One prompt, in the Alpaca template the model was finetuned with:
    python tools/generate.py --pretrained_path CKPT_DIR --prompt "Name three colors."
An interactive chat in a dialog template (an empty line or Ctrl-D ends it):
    python tools/generate.py --pretrained_path CKPT_DIR --chat --template accessory
Base plus deltas: --pretrained_path BASE DELTA. Tensor parallel: torchrun --nproc_per_node=N tools/generate.py ...
(the model-parallel size is the number of processes). Config, tokenizer and llama_type default to
the files in the last --pretrained_path.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

import accessory
from accessory.distributed import groups
from accessory.api import DTYPES
from accessory.distributed.errors import run_entrypoint
from accessory.generation import dialog_prompt, generate, instruction_prompt

STOP_TEXTS = {"accessory": ["\n###"], "vicuna_v1.1": ["USER:"], "llama2_chat": ["[INST]"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_path", nargs="+", required=True, help="checkpoint directories, base first")
    parser.add_argument("--llama_config", nargs="+", default=None)
    parser.add_argument("--tokenizer_path", default=None)
    parser.add_argument("--llama_type", default=None)
    parser.add_argument("--prompt", help="an instruction (single-turn mode)")
    parser.add_argument("--input", default="", help="the instruction's optional input")
    parser.add_argument("--prompt_type", default="alpaca", help="alpaca, alpaca_short, None, ...")
    parser.add_argument("--chat", action="store_true", help="interactive chat in --template")
    parser.add_argument("--template", default="accessory", help="dialog template: accessory, vicuna_v1.1, llama2_chat")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.1, help="0: greedy")
    parser.add_argument("--top_p", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()
    if not args.chat and args.prompt is None:
        parser.error("give --prompt, or --chat for an interactive session")
    model = accessory.load(args.pretrained_path, args.llama_config, args.tokenizer_path, args.llama_type,
                           model_parallel_size=int(os.environ.get("WORLD_SIZE", "1")), dtype=DTYPES[args.dtype],
                           device=groups.device())
    generator = torch.Generator(device=groups.device()).manual_seed(args.seed)
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    generator=generator, on_text=_print)
    if args.chat:
        chat(model, args.template, settings)
    else:
        generate(model, instruction_prompt(model.tokenizer, args.prompt, args.input, args.prompt_type), **settings)
        _print("\n")


def chat(model: accessory.api.MetaModel, template: str, settings: dict) -> None:
    turns: list[tuple[str, str]] = []
    while True:
        question = _read_line("human> ")
        if not question:
            return
        turns.append(("human", question))
        _print("assistant> ")
        answer = generate(model, dialog_prompt(model.tokenizer, turns, template),
                          stop_texts=STOP_TEXTS.get(template, []), **settings)
        _print("\n")
        turns.append(("gpt", answer.strip()))


def _read_line(prompt: str) -> str:
    """A line from rank 0's stdin, shared with every rank."""
    line = [None]
    if groups.is_main_process():
        try:
            line[0] = input(prompt).strip()
        except EOFError:
            line[0] = ""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(line, src=0)
    return line[0]


def _print(text: str) -> None:
    """Output from rank 0 only: every model-parallel rank generates the same text."""
    if groups.is_main_process():
        sys.stdout.write(text)
        sys.stdout.flush()


if __name__ == "__main__":
    run_entrypoint(main)
