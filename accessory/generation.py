"""Text generation with the KV cache: prompts built with the training templates, temperature and
top-p sampling, tokens streamed as they come. Works under tensor parallelism (every model-parallel
rank runs the same loop; rank 0's sampled token is broadcast so all ranks stay identical)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.distributed as dist

from accessory.data.encode import encode_parts
from accessory.data.records import RawRecord
from accessory.data.templates import render_record
from accessory.distributed import groups
from accessory.model.meta import MetaModel
from accessory.tokenizer import Tokenizer


def instruction_prompt(tokenizer: Tokenizer, instruction: str, input: str = "", prompt_type: str = "alpaca") -> List[int]:
    """The tokens a single-turn model was trained to answer: the prompt of an Alpaca record."""
    record = {"instruction": instruction, "input": input, "output": "-"}
    return _prompt(tokenizer, record, dialog=False, prompt_type=prompt_type, template="accessory")


def dialog_prompt(tokenizer: Tokenizer, turns: Sequence[tuple[str, str]], template: str = "accessory",
                  system: Optional[str] = None) -> List[int]:
    """The tokens of a conversation so far ((role, text) pairs, roles human/gpt), ending where the
    assistant's next answer begins."""
    conversation = ([{"from": "system", "value": system}] if system is not None else [])
    conversation += [{"from": role, "value": text} for role, text in turns] + [{"from": "gpt", "value": "-"}]
    return _prompt(tokenizer, {"conversations": conversation}, dialog=True, prompt_type="alpaca", template=template)


def _prompt(tokenizer: Tokenizer, record: dict, dialog: bool, prompt_type: str, template: str) -> List[int]:
    parts = render_record(RawRecord("the prompt", record), dialog=dialog, prompt_type=prompt_type, template=template)
    ids, _ = encode_parts(parts[:-1], tokenizer)  # everything before the (placeholder) answer
    return ids


@torch.inference_mode()
def generate(model: MetaModel, prompt: List[int], max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 0.9, stop_texts: Sequence[str] = (), on_text: Callable[[str], None] = lambda s: None,
             generator: Optional[torch.Generator] = None) -> str:
    """The answer's text. Stops at EOS, at any of `stop_texts` (cut from the answer), or after
    `max_new_tokens`; `on_text` receives each newly decoded piece of text."""
    llma, tokenizer = model.llma, model.tokenizer
    device = next(llma.parameters()).device
    total = min(len(prompt) + max_new_tokens, llma.args.max_seq_len)
    llma.setup_cache(1, total)
    tokens = torch.tensor([prompt], device=device)
    answer: List[int] = []
    shown = ""
    position = 0
    while len(prompt) + len(answer) < total:
        logits = llma.forward_inference(tokens, position)
        position += tokens.shape[1]
        token = _sample(logits[0], temperature, top_p, generator)
        if token == tokenizer.eos_id:
            break
        answer.append(token)
        text = tokenizer.decode(answer)
        stop = next((s for s in stop_texts if s in text), None)
        if stop is not None:
            text = text[: text.index(stop)]
        if len(text) > len(shown):
            on_text(text[len(shown):])
            shown = text
        if stop is not None:
            break
        tokens = torch.tensor([[token]], device=device)
    return shown


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: Optional[torch.Generator]) -> int:
    if temperature <= 0:
        token = logits.argmax()
    else:
        probs = torch.softmax(logits / temperature, dim=-1)
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the smallest set reaching top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        token = order[choice][0]
    if dist.is_initialized() and groups.mp_world() > 1:  # identical on every model-parallel rank
        token = token.reshape(1).clone()
        dist.broadcast(token, src=dist.get_global_rank(groups.mp_group(), 0), group=groups.mp_group())
    return int(token)
