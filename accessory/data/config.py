"""The data_config YAML, in LLaMA2-Accessory's format.

```yaml
META:                                   # training files
  - path: data/alpaca_gpt4_data.json    # .json (a list of records) or .jsonl (one record per line)
    type: text                          # group: a global batch never mixes groups (default "text")
    ratio: 0.5                          # optional: subsample (< 1) or repeat (> 1)
    prompt_type: alpaca                 # optional, single-turn records
    template: accessory                 # optional, dialog records
  - ['../data/sharegpt.json', 'text']   # LLaMA2-Accessory's older [path, type] form
VAL:                                    # optional held-out files, same entry format
  - path: data/val.json
```

LLaMA2-Accessory resolved relative paths against the working directory its scripts ran in; here a
relative path is looked up next to the YAML first, then in the working directory, and the log says which.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from accessory.data.templates import DIALOG_TEMPLATES, PROMPT_FORMATS
from accessory.errors import AccessoryError

DATA_SUFFIXES = (".json", ".jsonl")
_KEYS = ("path", "type", "ratio", "prompt_type", "template")


@dataclass(frozen=True)
class DataSource:
    """One data file and how to read it."""

    path: Path
    group: str = "text"
    ratio: float = 1.0
    prompt_type: str = "alpaca"
    template: str = "accessory"


@dataclass(frozen=True)
class DataConfig:
    train: list[DataSource]
    val: list[DataSource]


def load_data_config(config_path: str | Path, log: Callable[[str], None] = print) -> DataConfig:
    config_path = Path(config_path)
    config = _read_yaml(config_path)
    if not isinstance(config, dict) or not config.get("META"):
        raise AccessoryError(f"{config_path}: no 'META' list of data files; add `META:` with entries like "
                             "`- path: data.json` and `type: text`")
    unknown = set(config) - {"META", "VAL"}
    if unknown:
        raise AccessoryError(f"{config_path}: unknown top-level key(s) {sorted(unknown)}; use META (and VAL)")
    return DataConfig(train=_sources(config_path, config, "META", log),
                      val=_sources(config_path, config, "VAL", log) if config.get("VAL") else [])


def _read_yaml(config_path: Path) -> Any:
    if not config_path.is_file():
        raise AccessoryError(f"data config {config_path} does not exist; pass --data_config with a YAML file")
    try:
        return yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise AccessoryError(f"{config_path}: invalid YAML ({' '.join(str(e).split())}); fix its syntax") from None


def _sources(config_path: Path, config: dict, section: str, log: Callable[[str], None]) -> list[DataSource]:
    entries = config[section]
    if not isinstance(entries, list):
        raise AccessoryError(f"{config_path}: '{section}' must be a list of data files, found "
                             f"{type(entries).__name__}; write each file as `- path: ...` under {section}")
    return [_source(config_path, f"{config_path} {section}[{k}]", entry, log) for k, entry in enumerate(entries)]


def _source(config_path: Path, where: str, entry: Any, log: Callable[[str], None]) -> DataSource:
    if isinstance(entry, list) and len(entry) == 2:
        entry = {"path": entry[0], "type": entry[1]}
    if not isinstance(entry, dict):
        raise AccessoryError(f"{where}: expected `path: ...` (and type, ratio, prompt_type, template) or "
                             f"[path, type], found {entry!r}")
    unknown = set(entry) - set(_KEYS)
    if unknown:
        raise AccessoryError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {', '.join(_KEYS)}")
    raw_path = entry.get("path")
    if not isinstance(raw_path, str) or not raw_path:
        raise AccessoryError(f"{where}: 'path' is missing; give the data file as `path: data.json`")
    group = entry.get("type", "text")
    if not isinstance(group, str) or not group:
        raise AccessoryError(f"{where}: 'type' must be a non-empty string (the group name), found {group!r}")
    ratio = entry.get("ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise AccessoryError(f"{where}: 'ratio' must be a number > 0 (< 1 subsamples, > 1 repeats), found {ratio!r}")
    prompt_type = _choice(where, "prompt_type", entry.get("prompt_type", "alpaca"), PROMPT_FORMATS)
    template = _choice(where, "template", entry.get("template", "accessory"), DIALOG_TEMPLATES)
    return DataSource(_resolve(config_path, where, raw_path, log), group, float(ratio), prompt_type, template)


def _choice(where: str, key: str, value: Any, allowed: dict) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise AccessoryError(f"{where}: unknown {key} {value!r}; use one of {', '.join(allowed)}")
    return value


def _resolve(config_path: Path, where: str, raw_path: str, log: Callable[[str], None]) -> Path:
    path = Path(raw_path).expanduser()
    if path.suffix not in DATA_SUFFIXES:
        raise AccessoryError(f"{where}: {raw_path} is not a .json or .jsonl file; convert it to a JSON list "
                             "of records or to JSON lines")
    if path.is_absolute():
        if not path.is_file():
            raise AccessoryError(f"{where}: data file {raw_path} not found; fix 'path'")
        return path.resolve()
    candidates = [(config_path.parent / path, "the YAML's folder"), (Path.cwd() / path, "the working directory")]
    for candidate, base in candidates:
        if candidate.is_file():
            log(f"{where}: {raw_path} is {candidate.resolve()} (relative to {base})")
            return candidate.resolve()
    tried = " or ".join(str(candidate) for candidate, _ in candidates)
    raise AccessoryError(f"{where}: data file {raw_path} not found (looked for {tried}); fix 'path'")
