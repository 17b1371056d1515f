"""Prompt formats (single-turn) and conversation templates (dialog), rendered as a list of `Part`s.

Each part is tokenized on its own (see `encode.encode_parts`), so a part boundary is always a token
boundary and the trained tokens are exactly the tokens of the trained text. SentencePiece begins every
encoding at a word boundary, so each part after the first reads as if one space preceded it: the
templates below are written that way, and `render_text` joins parts with a space to show the text a
model sees (a tokenizer without SentencePiece's dummy prefix, like Llama 3's, joins them without).
The texts come from LLaMA2-Accessory (`data/system_prompt.py`, `data/conversation/`), FastChat
(vicuna_v1.1) and Meta's Llama 2 reference `chat_completion` (llama2_chat).
"""
from dataclasses import dataclass
from typing import Callable, Sequence

from accessory.data.records import (ASSISTANT, USER, BadRecord, Conversation, Instruction, RawRecord,
                                    parse_conversation, parse_instruction)


@dataclass(frozen=True)
class Part:
    text: str
    trained: bool = False
    bos: bool = False
    eos: bool = False


def render_text(parts: Sequence[Part]) -> str:
    """The text that `parts` tokenize to (BOS and EOS left out)."""
    return " ".join(part.text for part in parts)


def render_record(raw: RawRecord, *, dialog: bool, prompt_type: str, template: str) -> list[Part]:
    """Parts of one record; raises BadRecord when the record cannot be used."""
    if dialog:
        return DIALOG_TEMPLATES[template](parse_conversation(raw))
    record = parse_instruction(raw)
    return [Part(PROMPT_FORMATS[prompt_type].prompt(record), bos=True),
            Part(record.output, trained=True, eos=True)]


@dataclass(frozen=True)
class PromptFormat:
    without_input: str
    with_input: str | None = None  # None: no slot for 'input', which is ignored (as LLaMA2-Accessory does)

    def prompt(self, record: Instruction) -> str:
        if self.with_input is not None and record.input.strip():
            return self.with_input.format(instruction=record.instruction, input=record.input)
        return self.without_input.format(instruction=record.instruction)


_ALPACA_HEAD = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.\n\n")
_ALPACA_INPUT_HEAD = ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.\n\n")

PROMPT_FORMATS: dict[str, PromptFormat] = {
    # Stanford Alpaca's two prompts, LLaMA2-Accessory's default.
    "alpaca": PromptFormat(
        without_input=_ALPACA_HEAD + "### Instruction:\n{instruction}\n\n### Response:",
        with_input=_ALPACA_INPUT_HEAD + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"),
    # The same without the preamble (alpaca-lora's templates/alpaca_short.json).
    "alpaca_short": PromptFormat(
        without_input="### Instruction:\n{instruction}\n\n### Response:\n",
        with_input="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    # LLaMA2-Accessory's other prompt types: short answers, question generation, and the raw instruction.
    "shortqa": PromptFormat(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request "
        "using a single word or phrase.\n\n### Instruction:\n{instruction}\n\n### Response:"),
    "qg": PromptFormat("Generate a question whose answer is:\n{instruction}\n\nQuestion:\n"),
    "None": PromptFormat("{instruction}"),
}

ACCESSORY_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.")


def _accessory(conversation: Conversation) -> list[Part]:
    """LLaMA2-Accessory's default: "SYSTEM\\n\\n### Human: Q\\n### Assistant: A\\n### Human: ...".

    An answer is trained with the "\\n###" that follows it: the demo stops generating there.
    """
    system = ACCESSORY_SYSTEM if conversation.system is None else conversation.system
    parts = [Part(f"{system}\n\n###", bos=True)]
    for turn in conversation.turns:
        if turn.role == USER:
            parts.append(Part(f"Human: {turn.text}\n###"))
        else:
            parts += [Part("Assistant:"), Part(f"{turn.text}\n###", trained=True)]
    return parts


def _vicuna(conversation: Conversation) -> list[Part]:
    """FastChat's vicuna_v1.1: "SYSTEM USER: Q ASSISTANT: A</s>USER: ...", each answer trained with its EOS."""
    system = VICUNA_SYSTEM if conversation.system is None else conversation.system
    parts = [Part(system, bos=True)]
    for turn in conversation.turns:
        if turn.role == USER:
            parts.append(Part(f"USER: {turn.text}"))
        else:
            parts += [Part("ASSISTANT:"), Part(turn.text, trained=True, eos=True)]
    return parts


def _llama2_chat(conversation: Conversation) -> list[Part]:
    """Meta's Llama-2-chat: "<s>[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nQ [/INST] A </s><s>[INST] Q2 [/INST] ...".

    Texts are stripped and each answer keeps Meta's trailing space; it is trained with its EOS. Without a
    system turn, Meta's original default system prompt is used, as LLaMA2-Accessory does.
    """
    roles = [turn.role for turn in conversation.turns]
    if roles[::2] != [USER] * len(roles[::2]) or roles[1::2] != [ASSISTANT] * len(roles[1::2]):
        raise BadRecord(f"field 'conversations' has turns {', '.join(roles)}; llama2_chat needs user and "
                        "assistant turns alternating, starting with the user")
    system = LLAMA2_SYSTEM if conversation.system is None else conversation.system
    parts = []
    for k, turn in enumerate(conversation.turns):
        if turn.role == USER:
            question = f"<<SYS>>\n{system}\n<</SYS>>\n\n{turn.text}" if k == 0 else turn.text
            parts.append(Part(f"[INST] {question.strip()} [/INST]", bos=True))
        else:
            parts.append(Part(f"{turn.text.strip()} ", trained=True, eos=True))
    return parts


DIALOG_TEMPLATES: dict[str, Callable[[Conversation], list[Part]]] = {
    "accessory": _accessory,
    "vicuna_v1.1": _vicuna,
    "llama2_chat": _llama2_chat,
}
