"""llama_peft: LoRA, bias and norm tuning on the one LLaMA, tensor-parallel, with trainable-only
checkpoints, LoRA merging and QLoRA (CUDA only)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import accessory
from accessory.api import build_model, model_args
from accessory.errors import AccessoryError
from accessory.main_finetune import check_args, prepare_parameters
from accessory.model.llama import ModelArgs
from accessory.model.meta import MetaModel
from accessory.model.peft import merge_lora, quantize_base
from accessory.tokenizer import Tokenizer
from accessory.train.args import get_args_parser
from accessory.train.optim import build_optimizer
from conftest import TINY_VOCAB, make_checkpoint
from helpers import REPO, run_python, torchrun

CONFIGS = REPO / "configs" / "model" / "finetune" / "sg"
NORM_BIAS_LORA = CONFIGS / "llamaPeft_normBiasLora.json"
TOKENS = torch.randint(0, TINY_VOCAB, (2, 17), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def base(tiny_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tiny_dir, tmp_path_factory.mktemp("peft") / "base", "meta_ori", 1)


def peft_config(tmp_path: Path, **values) -> Path:
    path = tmp_path / "peft.json"
    path.write_text(json.dumps(values))
    return path


def load_peft(tiny_dir, paths, *configs) -> MetaModel:
    return accessory.load([str(p) for p in paths], [tiny_dir / "params.json", *configs], llama_type="llama_peft")


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.llma(TOKENS)


def finetune_args(tiny_dir, base, data, output_dir, *extra) -> list:
    return ["-m", "accessory.main_finetune", "--output_dir", output_dir, "--llama_type", "llama_peft",
            "--llama_config", tiny_dir / "params.json", NORM_BIAS_LORA, "--tokenizer_path", tiny_dir / "tokenizer.model",
            "--pretrained_path", base, "--data_config", data, "--max_words", 64, "--batch_size", 2, "--epochs", 1,
            "--num_workers", 0, "--cache_dir", Path(output_dir) / "cache", *extra]


@pytest.mark.parametrize("overrides", [
    {"lora_rank": -1, "bias_tuning": True},
    {"lora_rank": 16, "bias_tuning": True},
    {"lora_rank": 4, "lora_alpha": 32, "lora_dropout": 0.1, "lora_targets": ["wq", "wv", "w2"], "bias_tuning": False},
])
def test_fresh_peft_model_computes_the_base_model_exactly(tiny_dir, base, tmp_path, overrides):
    peft = load_peft(tiny_dir, [base], peft_config(tmp_path, **overrides))
    assert torch.equal(logits(peft), logits(accessory.load(str(base))))


def test_optimizer_step_changes_only_trainable_parameters(tiny_dir, base):
    torch.manual_seed(0)
    model = load_peft(tiny_dir, [base], NORM_BIAS_LORA).train()
    prepare_parameters(model, torch.bfloat16)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.endswith((".bias", "lora_a.weight", "lora_b.weight", "norm.weight"))}
    assert len(trainable) == 2 * 7 * 3 + 2 * 2 + 1  # per block 7 x (bias, A, B) and 2 norms; the final norm
    assert all((p.dtype == torch.float32) == p.requires_grad for p in model.parameters())
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for n, p in model.named_parameters()
                                                                           if n in trainable}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # A moves from the second step on, once B is no longer zero
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(TOKENS, TOKENS).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_norm_tuning_off_freezes_norms(tiny_dir, base, tmp_path):
    model = load_peft(tiny_dir, [base], NORM_BIAS_LORA, peft_config(tmp_path, norm_tuning=False))
    assert not any(model.is_trainable(n) for n, _ in model.named_parameters() if n.endswith("norm.weight"))


def test_merge_without_bias_tuning_gives_plain_llama(tiny_dir, base, tmp_path):
    model = load_peft(tiny_dir, [base], peft_config(tmp_path, lora_rank=4, lora_alpha=8, bias_tuning=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_b" in name:
                param.normal_(std=0.05)  # a trained-looking B, so that the merge matters
    unmerged = logits(model)
    merged = merge_lora(model)
    assert merged.llama_type == "llama" and type(merged.args) is ModelArgs
    plain = build_model("llama", merged.args)
    plain.load_state_dict(merged.state)
    torch.testing.assert_close(logits(plain), unmerged, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-4)  # merging left the model's function as it was


def test_merge_needs_a_peft_model(base):
    with pytest.raises(AccessoryError, match="llama_type llama has no LoRA to merge"):
        merge_lora(accessory.load(str(base)))


def test_unknown_lora_target_is_named(tiny_dir, tmp_path):
    with pytest.raises(AccessoryError, match="lora_targets has unknown projections \\['wx'\\]"):
        model_args("llama_peft", [tiny_dir / "params.json", peft_config(tmp_path, lora_targets=["wq", "wx"])],
                   Tokenizer(str(tiny_dir / "tokenizer.model")), 1)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="the error without bitsandbytes")
def test_quant_without_bitsandbytes_is_a_one_line_error(tiny_dir, base, tiny_data, tmp_path):
    args = get_args_parser().parse_args([str(a) for a in finetune_args(tiny_dir, base, tiny_data, tmp_path)[2:]]
                                        + ["--quant", "--only_save_trainable"])
    with pytest.raises(AccessoryError, match="pip install bitsandbytes") as error:
        check_args(args)
    assert "\n" not in str(error.value)


def test_qlora_trains_lora_on_an_nf4_base(tiny_dir, base):
    pytest.importorskip("bitsandbytes")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_peft(tiny_dir, [base], NORM_BIAS_LORA).train()
    prepare_parameters(model, torch.bfloat16)
    model.to(device)
    tokens = TOKENS.to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        reference = model.llma(tokens).float()
    quantize_base(model, torch.bfloat16, device)
    assert not any(n.endswith(("wq.weight", "w2.weight")) for n, _ in model.named_parameters())
    with torch.autocast(device.type, dtype=torch.bfloat16):
        quantized = model.llma(tokens).float()
        model(tokens, tokens).backward()
    # each base projection computes with exactly its dequantized NF4 weight ...
    import bitsandbytes.functional as bnbf
    wq = model.llma.layers[0].attention.wq
    x = torch.randn(3, wq.nf4.in_features, device=device, dtype=torch.bfloat16)
    dequantized = bnbf.dequantize_4bit(wq.nf4.weight.data, wq.nf4.weight.quant_state).to(torch.bfloat16)
    torch.testing.assert_close(wq.nf4(x), x @ dequantized.t(), rtol=2e-2, atol=2e-2)
    # ... which stays close to the original: NF4 keeps the model's outputs (a random tiny model here)
    assert torch.nn.functional.cosine_similarity(quantized.flatten(), reference.flatten(), dim=0) > 0.95
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def dp_run(tiny_dir, base, tiny_data, tmp_path_factory) -> Path:
    """A 2-rank data-parallel PEFT finetune (FSDP, bf16: frozen bf16 and trainable fp32 in one unit)
    that saves only the trainable parameters."""
    out = tmp_path_factory.mktemp("peft_dp")
    torchrun(2, finetune_args(tiny_dir, base, tiny_data, out, "--data_parallel", "fsdp", "--precision", "bf16",
                              "--lr", 1e-2, "--max_steps", 12, "--only_save_trainable", "--checkpointing"))
    return out


@pytest.mark.slow
def test_data_parallel_finetune_loss_falls(dp_run):
    losses = [json.loads(line)["loss"] for line in (dp_run / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.9, losses


@pytest.mark.slow
def test_trainable_only_checkpoint_is_small_and_loads_as_base_plus_delta(tiny_dir, base, dp_run):
    ckpt = dp_run / "epoch0-iter12"
    shard = ckpt / "consolidated.00-of-01.model.pth"
    delta = torch.load(shard, weights_only=True)["model"]
    base_model = accessory.load(str(base))
    model = accessory.load([str(base), str(ckpt)])  # llama_peft and its config from the delta's side files
    assert set(delta) == {n for n, _ in model.named_parameters() if model.is_trainable(n)}
    assert shard.stat().st_size < 0.2 * (base / "consolidated.00.pth").stat().st_size
    base_params = dict(base_model.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, delta[name] if name in delta else base_params[name]), name
    assert not torch.allclose(logits(model), logits(base_model), atol=1e-2)


@pytest.mark.slow
def test_merged_checkpoint_loads_with_the_unmerged_logits(base, dp_run, tmp_path):
    ckpt = dp_run / "epoch0-iter12"
    run_python(["tools/merge_lora.py", "--pretrained_path", base, ckpt, "--output_dir", tmp_path / "merged",
                "--dtype", "fp32", "--model_parallel_size", 2])
    assert json.loads((tmp_path / "merged" / "meta.json").read_text()) == {"llama_type": "llama_peft"}  # tuned biases
    merged = accessory.load(str(tmp_path / "merged"))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), logits(accessory.load([str(base), str(ckpt)])), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_mp2_peft_checkpoint_loads_at_mp1(tiny_dir, base, tiny_data, tmp_path):
    out = tmp_path / "mp2"
    # one step: B moves, A does not yet (its gradient is zero while B is), so the saved A is its init
    torchrun(2, finetune_args(tiny_dir, base, tiny_data, out, "--model_parallel_size", 2, "--precision", "fp32",
                              "--lr", 1e-2, "--max_steps", 1))
    ckpt = out / "epoch0-iter1"
    torch.save(TOKENS, tmp_path / "tokens.pt")
    torchrun(2, ["tests/scripts/dump_logits.py", tmp_path / "logits.pt", tmp_path / "tokens.pt", ckpt])
    at_mp2 = torch.load(tmp_path / "logits.pt", weights_only=True)[str(ckpt)]
    at_mp1 = accessory.load(str(ckpt))
    torch.testing.assert_close(logits(at_mp1), at_mp2, rtol=0, atol=1e-5)
    torch.manual_seed(0)  # main_finetune's --seed
    fresh = load_peft(tiny_dir, [base], NORM_BIAS_LORA)
    saved = dict(at_mp1.named_parameters())
    for name, param in fresh.named_parameters():
        if "lora_a" in name:
            assert torch.equal(param, saved[name]), f"{name}: LoRA A's init depends on the model-parallel size"


def test_delta_onto_a_frozen_bf16_base_is_summed_in_fp32(tiny_dir, base, tmp_path):
    """The entrypoint's order: frozen weights get empty bf16 memory, then base and delta load into it;
    the delta is added in fp32 and rounded once."""
    from accessory.checkpoint.load import load_pretrained
    from accessory.checkpoint.save import save_shard

    tokenizer = Tokenizer(str(tiny_dir / "tokenizer.model"))
    args = model_args("llama_peft", [tiny_dir / "params.json", NORM_BIAS_LORA], tokenizer, 1)
    name = "llma.layers.0.attention.wq.weight"
    model = build_model("llama_peft", args, tokenizer)
    prepare_parameters(model, torch.bfloat16, loaded_later=True)
    load_pretrained(model, [str(base)], 0, 1, may_be_fresh=model.is_added, log=lambda message: None)
    base_value = dict(model.named_parameters())[name].detach().clone()
    delta = torch.randn(base_value.shape, generator=torch.Generator().manual_seed(7)) * 1e-3
    save_shard({name: delta}, str(tmp_path / "delta"), 0, 1, "diff")
    model = build_model("llama_peft", args, tokenizer)
    prepare_parameters(model, torch.bfloat16, loaded_later=True)
    load_pretrained(model, [str(base), str(tmp_path / "delta")], 0, 1, may_be_fresh=model.is_added,
                    log=lambda message: None)
    loaded = dict(model.named_parameters())[name]
    assert loaded.dtype == torch.bfloat16 and not loaded.requires_grad
    assert torch.equal(loaded, (base_value.float() + delta).bfloat16())
