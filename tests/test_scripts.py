"""The launch scripts in exps/finetune/sg/, run as a user runs them (bash, from another working
directory), on a tiny model: positional arguments, variables from the environment, extra flags
appended last, and the preflight check that stops bad input before torchrun starts."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import make_checkpoint
from helpers import REPO

pytestmark = pytest.mark.slow
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
TINY_FLAGS = ["--max_steps", "2", "--max_words", "256", "--batch_size", "2", "--accum_iter", "1", "--num_workers", "0",
              "--precision", "fp32"]


@pytest.fixture(scope="module")
def base(tiny_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tiny_dir, tmp_path_factory.mktemp("scripts") / "base", "meta_ori", 1)


@pytest.fixture(scope="module")
def dialog_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dialog")
    conversations = [{"conversations": [{"from": "human", "value": f"What is {i} plus one?"},
                                        {"from": "gpt", "value": f"It is {i + 1}."},
                                        {"from": "human", "value": "And twice that?"},
                                        {"from": "gpt", "value": f"{2 * (i + 1)}."}]} for i in range(24)]
    (root / "chats.json").write_text(json.dumps(conversations))
    (root / "dialog.yaml").write_text("META:\n  - path: chats.json\n    type: text\n")
    return root / "dialog.yaml"


def run_script(name: str, args: list, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    environment = {**os.environ, "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(["bash", str(REPO / "exps/finetune/sg" / name), *map(str, args)], cwd=cwd,
                            env=environment, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def steps(output_dir: Path) -> list:
    return [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("script,env,data", [
    ("alpaca.sh", {}, "tiny"),
    ("dialog_sharegpt.sh", {}, "dialog"),
    ("dialog_sharegpt_13B.sh", {}, "dialog"),  # MP 2 as written: 2 processes make one model replica
    ("dialog_sharegpt_70B.sh", {"model_parallel": "2"}, "dialog"),
    ("alpaca_llamaPeft_normBias.sh", {}, "tiny"),
    ("alpaca_llamaPeft_normBiasLora.sh", {"data_parallel": "fsdp"}, "tiny"),
    ("dialog_sharegpt_llamaPeft_normBiasLora.sh", {}, "dialog"),
    pytest.param("alpaca_llamaPeft_normBiasLora_QF.sh", {}, "tiny",  # NF4 on CPU (bitsandbytes 0.50)
                 marks=pytest.mark.skipif(not HAS_BITSANDBYTES, reason="QLoRA needs bitsandbytes")),
])
def test_script_finetunes_a_tiny_model(script, env, data, base, tiny_dir, tiny_data, dialog_data, tmp_path):
    data_config = tiny_data if data == "tiny" else dialog_data
    exp_name = "exp/" + script.removesuffix(".sh")
    run_script(script, [base, tiny_dir / "params.json", tiny_dir / "tokenizer.model", *TINY_FLAGS,
                        "--cache_dir", tmp_path / "cache"], cwd=tmp_path,
               env={"data_config": str(data_config), "exp_name": exp_name, **env})
    output = tmp_path / "output" / exp_name
    assert steps(output) == [1, 2]
    assert (output / "output.log").is_file() and (output / "epoch0-iter2").is_dir()


def test_bad_input_stops_before_torchrun(base, tiny_dir, tmp_path):
    result = run_script("alpaca.sh", [base, tiny_dir / "params.json", tiny_dir / "tokenizer.model"], cwd=tmp_path,
                        env={"data_config": str(tmp_path / "missing.yaml")}, check=False)
    assert result.returncode != 0
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "output" / "finetune" / "sg" / "alpaca" / "metrics.jsonl").exists()


@pytest.mark.skipif(HAS_BITSANDBYTES, reason="the error without bitsandbytes")
def test_qlora_script_without_bitsandbytes_says_so(base, tiny_dir, tiny_data, tmp_path):
    result = run_script("alpaca_llamaPeft_normBiasLora_QF.sh", [base, tiny_dir / "params.json",
                        tiny_dir / "tokenizer.model"], cwd=tmp_path, env={"data_config": str(tiny_data)}, check=False)
    assert result.returncode != 0 and "pip install bitsandbytes" in result.stderr and "Traceback" not in result.stderr


def test_slurm_launch_through_srun(base, tiny_dir, dialog_data, tmp_path):
    """LAUNCHER=srun: one plain process per task, ranks from SLURM's variables (a stand-in srun)."""
    env = {"LAUNCHER": "srun", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "localhost",
           "PATH": f"{REPO / 'tests' / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}", "model_parallel": "2",
           "data_config": str(dialog_data), "exp_name": "slurm"}
    run_script("dialog_sharegpt_70B.sh", [base, tiny_dir / "params.json", tiny_dir / "tokenizer.model", *TINY_FLAGS,
                                          "--cache_dir", tmp_path / "cache"], cwd=tmp_path, env=env)
    assert steps(tmp_path / "output" / "slurm") == [1, 2]



def test_demo_runs_end_to_end(tmp_path):
    """The newcomer's first command, shortened by an extra flag (the full run takes a few minutes)."""
    result = run_script("demo.sh", ["--max_steps", "20"], cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert any(line.startswith("untrained: exact match") for line in lines)
    assert any(line.startswith("finetuned: exact match") for line in lines)
    assert (REPO / ".demo" / "output" / "epoch0-iter20").is_dir()
