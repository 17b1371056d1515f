"""The data_config YAML: LLaMA2-Accessory's files work unchanged, and mistakes are named."""
from pathlib import Path

import pytest

from accessory.data.config import DataSource, load_data_config
from accessory.errors import AccessoryError


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """LLaMA2-Accessory's layout: configs/data/finetune/sg/*.yaml and data files in ../data of the YAML."""
    (tmp_path / "configs" / "data" / "finetune" / "sg").mkdir(parents=True)
    (tmp_path / "configs" / "data" / "finetune" / "data").mkdir()
    (tmp_path / "configs" / "data" / "finetune" / "data" / "alpaca.json").write_text("[]")
    return tmp_path / "configs" / "data" / "finetune" / "sg"


def load(config_dir: Path, text: str) -> tuple:
    (config_dir / "c.yaml").write_text(text)
    logs: list[str] = []
    return load_data_config(config_dir / "c.yaml", logs.append), logs


def test_llama2_accessory_yamls_load_unchanged(layout):
    data_file = (layout.parent / "data" / "alpaca.json").resolve()
    config, logs = load(layout, "META:\n  -\n    path: '../data/alpaca.json'\n    type: 'text'\n")
    assert config.train == [DataSource(data_file, "text")] and config.val == []
    assert "relative to the YAML's folder" in logs[0]
    config, _ = load(layout, "META:\n  - ['../data/alpaca.json', 'text']\n")
    assert config.train == [DataSource(data_file, "text")]


def test_relative_path_falls_back_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "d.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    config, logs = load(tmp_path / "cfg", "META:\n  - path: d.json\n    type: t\n")
    assert config.train[0].path == (tmp_path / "d.json").resolve()
    assert "relative to the working directory" in logs[0]


def test_all_keys(layout):
    config, _ = load(layout, "META:\n  - path: ../data/alpaca.json\n    type: chat\n    ratio: 2\n"
                             "    prompt_type: None\n    template: llama2_chat\n"
                             "VAL:\n  - path: ../data/alpaca.json\n")
    source = config.train[0]
    assert (source.group, source.ratio, source.prompt_type, source.template) == ("chat", 2.0, "None", "llama2_chat")
    assert config.val[0].group == "text"


@pytest.mark.parametrize("text, expected", [
    ("VAL: []\n", "no 'META' list"),
    ("META:\n  - type: text\n", "META[0]: 'path' is missing"),
    ("META:\n  - path: ../data/missing.json\n", "META[0]: data file ../data/missing.json not found"),
    ("META:\n  - path: ../data/alpaca.csv\n", "not a .json or .jsonl file"),
    ("META:\n  - path: ../data/alpaca.json\n    prompt_type: alpacca\n", "unknown prompt_type 'alpacca'; use one of"),
    ("META:\n  - path: ../data/alpaca.json\n    template: chatml\n", "unknown template 'chatml'; use one of"),
    ("META:\n  - path: ../data/alpaca.json\n    ratio: 0\n", "'ratio' must be a number > 0"),
    ("META:\n  - path: ../data/alpaca.json\n    promt_type: alpaca\n", "unknown key(s) ['promt_type']"),
    ("META: [\n", "invalid YAML"),
])
def test_config_errors_name_the_entry_and_the_fix(layout, text, expected):
    with pytest.raises(AccessoryError) as error:
        load(layout, text)
    message = str(error.value)
    assert expected in message and str(layout / "c.yaml") in message and "\n" not in message


def test_missing_path_lists_both_places_looked_in(layout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AccessoryError, match="looked for .*missing.json or .*missing.json"):
        load(layout, "META:\n  - path: missing.json\n")
