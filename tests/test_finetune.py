"""The finetuning entrypoint in real multi-process torchrun/gloo jobs on CPU with a tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import accessory
from conftest import TINY_VOCAB, make_checkpoint
from helpers import run_python, torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tiny_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tiny_dir, tmp_path_factory.mktemp("finetune") / "base", "meta_ori", 1)


def finetune_args(tiny_dir, base, data, output_dir, *extra, pretrained_type="meta_ori") -> list:
    return ["-m", "accessory.main_finetune", "--output_dir", output_dir, "--llama_config", tiny_dir / "params.json",
            "--tokenizer_path", tiny_dir / "tokenizer.model", "--pretrained_path", base, "--pretrained_type",
            pretrained_type, "--data_config", data, "--max_words", 64, "--batch_size", 4, "--lr", 1e-3, "--epochs", 1,
            "--warmup_epochs", 0.0, "--precision", "fp32", "--num_workers", 0, "--cache_dir", Path(output_dir) / "cache",
            *extra]


def finetune(nproc: int, *args, **kwargs):
    return torchrun(nproc, args, **kwargs) if nproc > 1 else run_python(args, **kwargs)


def metrics(output_dir: Path) -> list:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def weights(checkpoint: Path) -> dict:
    return torch.load(next(checkpoint.glob("consolidated.00-of-*.model.pth")), weights_only=True)["model"]


@pytest.mark.parametrize("nproc,mp,mode,precision", [(2, 1, "fsdp", "fp32"), (2, 2, "sdp", "fp32"),
                                                     (4, 2, "fsdp", "fp32"), (2, 1, "ddp", "bf16"),
                                                     (2, 1, "sdp", "fp16")])
def test_trains_with_falling_loss(tiny_dir, base, tiny_data, tmp_path, nproc, mp, mode, precision):
    out = tmp_path / "out"
    finetune(nproc, *finetune_args(tiny_dir, base, tiny_data, out, "--model_parallel_size", mp, "--data_parallel",
                                   mode, "--precision", precision, "--max_steps", 8, "--batch_size", 2, "--clip_grad", 1.0))
    losses = [m["loss"] for m in metrics(out)]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.9, losses
    for field in ("step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "time"):
        assert field in metrics(out)[0]
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))


@pytest.fixture(scope="module")
def one_process_losses(tiny_dir, base, tiny_data, tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("one_process") / "out"
    finetune(1, *finetune_args(tiny_dir, base, tiny_data, out, "--max_steps", 4, "--batch_size", 2, "--accum_iter", 2))
    return [m["loss"] for m in metrics(out)]


@pytest.mark.parametrize("nproc,mp,mode", [(2, 1, "fsdp"), (2, 2, "fsdp"), (4, 2, "fsdp"), (2, 1, "ddp")])
def test_parallel_runs_match_one_process(tiny_dir, base, tiny_data, tmp_path, one_process_losses, nproc, mp, mode):
    """The same global batches through FSDP (each rank loading only its rows of the checkpoint) or
    DDP over nproc/mp ranks and tensor parallelism over mp: the same losses, step by step."""
    dp = nproc // mp
    finetune(nproc, *finetune_args(tiny_dir, base, tiny_data, tmp_path / "out", "--max_steps", 4, "--batch_size", 2,
                                   "--accum_iter", 2 // dp, "--model_parallel_size", mp, "--data_parallel", mode))
    losses = [m["loss"] for m in metrics(tmp_path / "out")]
    assert len(losses) == len(one_process_losses) == 4
    for a, b in zip(one_process_losses, losses):
        assert abs(a - b) <= 1e-5, (one_process_losses, losses)


def test_resume_continues_exactly(tiny_dir, base, tiny_data, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    common = ("--batch_size", 2, "--data_parallel", "fsdp", "--epochs", 2, "--warmup_epochs", 0.5)
    finetune(2, *finetune_args(tiny_dir, base, tiny_data, full, *common))
    finetune(2, *finetune_args(tiny_dir, base, tiny_data, split, *common, "--max_steps", 5))
    assert (split / "latest").read_text().strip() == "epoch0-iter5"
    finetune(2, *finetune_args(tiny_dir, base, tiny_data, split, *common, "--resume", "auto"))
    a, b = weights(full / "epoch1"), weights(split / "epoch1")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert [m["step"] for m in metrics(split)] == [m["step"] for m in metrics(full)]
    # a crash in the middle of a save leaves the previous checkpoint as the one resume picks
    crashed = tmp_path / "crashed"
    result = torchrun(2, ["tests/scripts/crash_in_second_save.py",
                          *finetune_args(tiny_dir, base, tiny_data, crashed, *common, "--save_iteration_interval", 4)[2:]],
                      check=False)
    assert result.returncode != 0
    assert (crashed / "latest").read_text().strip() == "epoch0-iter4" and (crashed / ".tmp-epoch0-iter8").is_dir()
    assert not (crashed / "epoch0-iter8").exists()
    finetune(2, *finetune_args(tiny_dir, base, tiny_data, crashed, *common, "--resume", "auto"))
    c = weights(crashed / "epoch1")
    assert max((a[k] - c[k]).abs().max().item() for k in a) <= 1e-6


def test_mp2_checkpoint_reloads_at_mp1(tiny_dir, base, tiny_data, tmp_path):
    out = tmp_path / "mp2"
    finetune(2, *finetune_args(tiny_dir, base, tiny_data, out, "--model_parallel_size", 2, "--max_steps", 2))
    ckpt = out / "epoch0-iter2"
    assert sorted(p.name for p in ckpt.glob("*.model.pth")) == ["consolidated.00-of-02.model.pth",
                                                                  "consolidated.01-of-02.model.pth"]
    tokens = torch.randint(0, TINY_VOCAB, (2, 17), generator=torch.Generator().manual_seed(3))
    torch.save(tokens, tmp_path / "tokens.pt")
    torchrun(2, ["tests/scripts/dump_logits.py", tmp_path / "mp2_logits.pt", tmp_path / "tokens.pt", ckpt])
    at_mp2 = torch.load(tmp_path / "mp2_logits.pt", weights_only=True)[str(ckpt)]
    with torch.no_grad():
        at_mp1 = accessory.load(str(ckpt)).llma(tokens)
    torch.testing.assert_close(at_mp1, at_mp2, rtol=0, atol=1e-5)
    # and as the starting point of a new run, at another MP size
    finetune(1, *finetune_args(tiny_dir, ckpt, tiny_data, tmp_path / "next", "--max_steps", 1,
                               pretrained_type="consolidated"))
    assert len(metrics(tmp_path / "next")) == 1


def test_error_on_one_rank_ends_the_job(tiny_dir, base, tiny_data, tmp_path):
    import time
    start = time.time()
    result = torchrun(2, ["tests/scripts/fail_on_rank1.py", *finetune_args(tiny_dir, base, tiny_data, tmp_path / "o")[2:],
                          "--max_steps", 50], check=False, timeout=120)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert time.time() - start < 60


def test_diverging_loss_stops_the_run_without_a_checkpoint(tiny_dir, base, tiny_data, tmp_path):
    out = tmp_path / "diverged"
    result = finetune(1, *finetune_args(tiny_dir, base, tiny_data, out, "--lr", 1e12, "--max_steps", 6), check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "the loss is nan at step 2" in errors[0] and "lower --lr" in errors[0], result.stderr
    assert not (out / "latest").exists()


def test_packing_and_validation(tiny_dir, base, tiny_data, tmp_path):
    out = tmp_path / "packed"
    finetune(2, *finetune_args(tiny_dir, base, tiny_data, out, "--packing", "--max_words", 256, "--batch_size", 1,
                               "--val_ratio", 0.2, "--epochs", 2, "--data_parallel", "fsdp"))
    records = metrics(out)
    val = [r for r in records if "val_loss" in r]
    train = [r for r in records if "loss" in r]
    assert len(val) == 2 and all(r["val_loss"] > 0 for r in val)
    assert train[-1]["loss"] < train[0]["loss"]
    assert [json.loads(line)["val_loss"] for line in (out / "log.txt").read_text().splitlines()] == \
        [r["val_loss"] for r in val]


def test_compile_gives_the_eager_losses(tiny_dir, base, tiny_data, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    finetune(1, *finetune_args(tiny_dir, base, tiny_data, eager, "--max_steps", 2))
    finetune(1, *finetune_args(tiny_dir, base, tiny_data, compiled, "--max_steps", 2, "--compile"))
    for a, b in zip(metrics(eager), metrics(compiled)):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
