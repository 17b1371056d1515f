"""Our LLaMA against transformers' LlamaForCausalLM, an independent implementation, on the same
random weights: GQA, rope_theta 500000, fp32, from Meta-original and consolidated checkpoints,
at MP 1 (in this process) and MP 2 (a real 2-process torchrun/gloo job)."""
from __future__ import annotations

import shutil

import pytest
import torch

import accessory
from accessory.checkpoint.hf import from_hf_rows, hf_config, hf_to_meta, to_hf_rows
from accessory.checkpoint.save import save_shard, split_state
from accessory.model.config import build_model_args
from conftest import TINY_VOCAB
from helpers import torchrun

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def hf_case(tiny_dir, tmp_path_factory):
    """An HF model with its own random init, written as a 2-shard meta_ori and a 1-shard
    consolidated checkpoint, and HF's logits for a batch of tokens."""
    root = tmp_path_factory.mktemp("hf_parity")
    args = build_model_args([tiny_dir / "params.json"], TINY_VOCAB)
    config = {k: v for k, v in hf_config(args).items() if k not in ("architectures", "torch_dtype")}
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    full = {"llma." + k: v for k, v in hf_to_meta(hf.state_dict(), args).items()}
    dims = accessory.checkpoint.load.split_dims(accessory.api.build_model("llama", args))
    for name, fmt, mp in (("meta2", "meta_ori", 2), ("cons1", "consolidated", 1)):
        for rank in range(mp):
            save_shard(split_state(full, dims, rank, mp), root / name, rank, mp, fmt)
        shutil.copy(tiny_dir / "params.json", root / name / "params.json")
        shutil.copy(tiny_dir / "tokenizer.model", root / name / "tokenizer.model")
    tokens = torch.randint(0, TINY_VOCAB, (2, 41), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, root / "tokens.pt")
    with torch.no_grad():
        reference = hf(tokens).logits
    return root, tokens, reference


def test_rotary_permutation_round_trip():
    w = torch.randn(48, 16)
    assert torch.equal(from_hf_rows(to_hf_rows(w, 6), 6), w)
    assert not torch.equal(to_hf_rows(w, 6), w)


@pytest.mark.parametrize("name", ["meta2", "cons1"])
def test_logits_match_transformers_mp1(hf_case, name):
    root, tokens, reference = hf_case
    model = accessory.load(str(root / name))
    with torch.no_grad():
        logits = model.llma(tokens)
    assert (logits - reference).abs().max().item() <= TOLERANCE


@pytest.mark.slow
def test_logits_match_transformers_mp2(hf_case):
    root, tokens, reference = hf_case
    out = root / "mp2_logits.pt"
    torchrun(2, ["tests/scripts/dump_logits.py", out, root / "tokens.pt", root / "meta2", root / "cons1"])
    for logits in torch.load(out, weights_only=True).values():
        assert (logits - reference).abs().max().item() <= TOLERANCE
