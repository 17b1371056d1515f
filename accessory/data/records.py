"""Reading data files and checking their records.

Single-turn records are Alpaca's `{"instruction", "input"?, "output"}`; dialog records are ShareGPT's
`{"conversations": [{"from": "human" | "user" | "gpt" | "assistant" | "system", "value": ...}]}`.
Locations in messages count records from 0 ("record 3") and lines from 1, as editors do.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from accessory.errors import AccessoryError

USER, ASSISTANT = "user", "assistant"
_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": "system"}


class BadRecord(Exception):
    """A record that cannot be trained on; the message names the field and the fix, not the location."""


@dataclass(frozen=True)
class RawRecord:
    where: str                 # "FILE record I" (+ " (line L)" in JSONL files)
    value: Any = None
    error: str | None = None   # why a JSONL line is not JSON: a bad record like any other, so it can be skipped


@dataclass(frozen=True)
class Instruction:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Conversation:
    system: str | None
    turns: tuple[Turn, ...]


def iter_records(path: Path) -> Iterator[RawRecord]:
    """The records of a .json file (a list) or a .jsonl file (one record per non-blank line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AccessoryError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    return _jsonl_records(path, text) if path.suffix == ".jsonl" else _json_records(path, text)


def _json_records(path: Path, text: str) -> Iterator[RawRecord]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise AccessoryError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); fix the file, "
                             "which must hold a JSON list of records") from None
    if not isinstance(records, list):
        raise AccessoryError(f"{path}: expected a JSON list of records, found {_kind(records)}; wrap the records "
                             "in [...] or write them one per line to a .jsonl file")
    for index, value in enumerate(records):
        yield RawRecord(f"{path} record {index}", value)


def _jsonl_records(path: Path, text: str) -> Iterator[RawRecord]:
    index = 0
    # Split on "\n" only: JSON strings may hold characters that str.splitlines() would also split on.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path} record {index} (line {line_no})"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            yield RawRecord(where, error=f"invalid JSON at column {e.colno} ({e.msg}); fix or delete the line")
        else:
            yield RawRecord(where, value)
        index += 1


def parse_instruction(raw: RawRecord) -> Instruction:
    record = _object(raw, "an object with 'instruction', 'output' and optionally 'input'")
    output = _text(record, "output")
    if not output.strip():
        raise BadRecord("field 'output' is empty; give the answer to train on")
    return Instruction(_text(record, "instruction"), _text(record, "input", optional=True), output)


def parse_conversation(raw: RawRecord) -> Conversation:
    record = _object(raw, "an object with a 'conversations' list")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        found = "missing" if turns is None else "empty" if turns == [] else f"{_kind(turns)}, not a list"
        raise BadRecord(f"field 'conversations' is {found}; give a list of "
                        "{\"from\": \"human\" | \"gpt\" | ..., \"value\": \"...\"} turns")
    system, parsed = None, []
    for k, turn in enumerate(turns):
        field = f"conversations[{k}]"
        if not isinstance(turn, dict):
            raise BadRecord(f"field '{field}' must be an object with 'from' and 'value', found {_kind(turn)}")
        role_name = _text(turn, "from", name=f"{field}.from")
        role = _ROLES.get(role_name.lower())
        if role is None:
            raise BadRecord(f"field '{field}.from' is {role_name[:40]!r}; use one of {', '.join(_ROLES)}")
        text = _text(turn, "value", name=f"{field}.value")
        if role != "system":
            parsed.append(Turn(role, text))
        elif k == 0:
            system = text
        else:
            raise BadRecord(f"field '{field}' is a system turn; a system prompt can only be the first turn")
    if not any(turn.role == ASSISTANT for turn in parsed):
        raise BadRecord("field 'conversations' has no assistant turn ('from': 'gpt' or 'assistant'), so nothing "
                        "would be trained; add the answers or remove the record")
    return Conversation(system, tuple(parsed))


def _object(raw: RawRecord, expected: str) -> dict:
    if raw.error is not None:
        raise BadRecord(raw.error)
    if not isinstance(raw.value, dict):
        raise BadRecord(f"expected {expected}, found {_kind(raw.value)}")
    return raw.value


def _text(record: dict, field: str, *, name: str | None = None, optional: bool = False) -> str:
    """The string `record[field]`; a missing optional field (or null) reads as ""."""
    value = record.get(field)
    if value is None and optional:
        return ""
    if value is None:
        raise BadRecord(f"field '{name or field}' is missing; add it as a string")
    if not isinstance(value, str):
        raise BadRecord(f"field '{name or field}' must be a string, found {_kind(value)}; quote it or convert it")
    return value


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)
