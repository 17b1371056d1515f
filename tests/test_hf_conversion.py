"""Hugging Face conversion: HF -> ours -> HF with the tools, as a user runs them. A random
transformers Llama (GQA, rope_theta 500000, fp32) saved as safetensors, sharded safetensors and
.bin converts at MP 1 and 2 in both layouts; `accessory.load` and then transformers, on the
converted-back directory, give its logits, and the weights come back bit for bit. Also: linear
rope scaling and tied embeddings, a base plus a delta written in bf16, the tokenizer files, and
weights with no counterpart on either side being errors rather than dropped."""
from __future__ import annotations

import importlib.util
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

import accessory
from accessory.api import build_model
from accessory.checkpoint.formats import find_checkpoint
from accessory.checkpoint.hf import hf_config, hf_sources
from accessory.checkpoint.save import save_shard
from accessory.errors import AccessoryError
from accessory.model.config import build_model_args
from accessory.tokenizer import Tokenizer
from conftest import TINY_VOCAB
from helpers import REPO, run_python

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-5
TEXTS = ["hello world 123 ABC", "the quick brown fox jumps over a lazy dog."]


def random_hf_model(tiny_dir, **overrides) -> "transformers.LlamaForCausalLM":
    """A transformers Llama for the tiny config, with random norm weights too (so that a swapped
    norm mapping shows in the logits)."""
    args = build_model_args([tiny_dir / "params.json"], TINY_VOCAB)
    config = {k: v for k, v in hf_config(args).items() if k not in ("architectures", "torch_dtype")}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**config, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def save_hf(model, directory, tiny_dir, kind: str = "safetensors"):
    if kind == "bin":  # transformers 5 writes only safetensors: a .bin is a plain state dict
        directory.mkdir(parents=True)
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory, max_shard_size="200KB" if kind == "sharded" else "5GB")
    shutil.copy(tiny_dir / "tokenizer.model", directory / "tokenizer.model")
    return directory


def to_accessory(src, dst, *flags):
    run_python(["tools/convert_hf_to_accessory.py", "--src", src, "--dst", dst, *flags])
    return dst


def to_hf(weights, dst, *flags):
    weights = weights if isinstance(weights, list) else [weights]
    run_python(["tools/convert_weights_to_hf.py", "--src_weights_path", *weights, "--src_config_path",
                weights[0] / "params.json", "--tokenizer_path", weights[0] / "tokenizer.model",
                "--dst_weights_path", dst, *flags])
    return dst


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def hf_logits(directory, tokens):
    model = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model, model(tokens).logits


def ours_logits(directory, tokens):
    with torch.no_grad():
        return accessory.load(str(directory)).llma(tokens)


@pytest.fixture(scope="module")
def case(tiny_dir, tmp_path_factory):
    """The HF model saved three ways, a batch of tokens and its logits."""
    root = tmp_path_factory.mktemp("hf_conversion")
    model = random_hf_model(tiny_dir)
    sources = {kind: save_hf(model, root / kind, tiny_dir, kind) for kind in ("safetensors", "sharded", "bin")}
    tokens = torch.randint(0, TINY_VOCAB, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(tokens).logits
    return SimpleNamespace(sources=sources, state=model.state_dict(), tokens=tokens, reference=reference)


def round_trip(source, root, *flags):
    """HF -> ours (with `flags`) -> HF in fp32: both output directories."""
    ours = to_accessory(source, root / "ours", *flags)
    return ours, to_hf(ours, root / "hf", "--dtype", "fp32")


def check_round_trip(case, ours, back) -> None:
    assert max_diff(ours_logits(ours, case.tokens), case.reference) <= TOLERANCE
    model, logits = hf_logits(back, case.tokens)
    assert max_diff(logits, case.reference) <= TOLERANCE
    assert all(torch.equal(model.state_dict()[k], v) for k, v in case.state.items())  # a pure permutation: exact


@pytest.fixture(scope="module")
def mp1_round_trip(case, tmp_path_factory):
    """safetensors -> one consolidated shard -> HF, shared by the tests that look at it."""
    return round_trip(case.sources["safetensors"], tmp_path_factory.mktemp("mp1_round_trip"))


def test_round_trip_safetensors_mp1(case, mp1_round_trip):
    ours, back = mp1_round_trip
    assert find_checkpoint(str(ours)).files == [str(ours / "consolidated.00-of-01.model.pth")]
    check_round_trip(case, ours, back)


@pytest.mark.slow
@pytest.mark.parametrize("source, mp, fmt", [("sharded", 2, "meta_ori"), ("bin", 2, "consolidated")])
def test_round_trip_mp2(case, source, mp, fmt, tmp_path):
    ours, back = round_trip(case.sources[source], tmp_path, "--model_parallel_size", mp, "--format", fmt)
    ckpt = find_checkpoint(str(ours))
    assert (ckpt.kind, ckpt.mp_size) == (fmt, mp)
    check_round_trip(case, ours, back)


@pytest.mark.slow
def test_linear_rope_scaling_and_tied_embeddings(tiny_dir, tmp_path):
    model = random_hf_model(tiny_dir, rope_scaling={"rope_type": "linear", "factor": 4.0}, tie_word_embeddings=True)
    source = save_hf(model, tmp_path / "src", tiny_dir)
    tokens = torch.randint(0, TINY_VOCAB, (1, 37), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = model(tokens).logits
    ours = to_accessory(source, tmp_path / "ours")
    params = json.loads((ours / "params.json").read_text())
    assert (params["rope_scaling"], params["rope_theta"]) == (4.0, 500000.0)
    assert max_diff(ours_logits(ours, tokens), reference) <= TOLERANCE

    back = to_hf(ours, tmp_path / "hf", "--dtype", "fp32", "--max_shard_size", "300KB")
    config = json.loads((back / "config.json").read_text())
    assert config["rope_scaling"]["factor"] == 4.0 and config["max_position_embeddings"] == 256
    assert len(json.loads((back / "model.safetensors.index.json").read_text())["weight_map"]) == 21
    assert max_diff(hf_logits(back, tokens)[1], reference) <= TOLERANCE


@pytest.mark.slow
def test_base_plus_delta_in_bf16(case, tmp_path):
    """Checkpoints load in order (here a .model-diff.pth delta onto the base); --dtype defaults to bf16."""
    state = case.state
    base = to_accessory(case.sources["safetensors"], tmp_path / "base")
    norm_delta = torch.full((192,), 0.25)
    w2_delta = torch.randn(192, 528, generator=torch.Generator().manual_seed(5))
    save_shard({"llma.norm.weight": norm_delta, "llma.layers.1.feed_forward.w2.weight": w2_delta},
               tmp_path / "delta", 0, 1, "diff")
    back = to_hf([base, tmp_path / "delta"], tmp_path / "hf")
    assert json.loads((back / "config.json").read_text())["torch_dtype"] == "bfloat16"
    weights = transformers.LlamaForCausalLM.from_pretrained(back, dtype="auto").state_dict()
    expected = {"model.norm.weight": state["model.norm.weight"] + norm_delta,  # summed in fp32, rounded once
                "model.layers.1.mlp.down_proj.weight": state["model.layers.1.mlp.down_proj.weight"] + w2_delta,
                "model.layers.0.self_attn.q_proj.weight": state["model.layers.0.self_attn.q_proj.weight"]}
    for name, value in expected.items():
        assert weights[name].dtype == torch.bfloat16 and torch.equal(weights[name], value.bfloat16()), name


def test_tokenizer_files(case, mp1_round_trip):
    """tokenizer.model copied, tokenizer_config.json for LlamaTokenizer; transformers tokenizes as
    SentencePiece does (checked where transformers can read a .model, which needs protobuf)."""
    ours, back = mp1_round_trip
    assert (back / "tokenizer.model").read_bytes() == (case.sources["safetensors"] / "tokenizer.model").read_bytes()
    config = json.loads((back / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
    pytest.importorskip("google.protobuf", reason="transformers converts a SentencePiece .model with protobuf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(back)
    ours = Tokenizer(str(back / "tokenizer.model"))
    for text in TEXTS:
        assert hf_tokenizer(text).input_ids == ours.encode(text, bos=True, eos=False)


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameters_without_hf_equivalent_are_an_error(tiny_dir):
    """An adapter's weights (here a stand-in for LoRA) are never silently dropped."""
    args = build_model_args([tiny_dir / "params.json"], TINY_VOCAB)
    state = {name: p.detach() for name, p in build_model("llama", args).named_parameters()}
    state["llma.layers.0.attention.wq.lora_a.weight"] = torch.zeros(4, args.dim)
    with pytest.raises(AccessoryError, match=r"layers\.0\.attention\.wq\.lora_a\.weight"):
        load_tool("convert_weights_to_hf").hf_weights(state, args)


def test_hf_weights_without_llama_equivalent_are_an_error(tiny_dir, tmp_path):
    """Attention biases (Qwen-style) have nowhere to go in a Llama: an error, not a silent drop."""
    source = save_hf(random_hf_model(tiny_dir, attention_bias=True), tmp_path / "src", tiny_dir)
    args = build_model_args([tiny_dir / "params.json"], TINY_VOCAB)
    weights = load_tool("convert_hf_to_accessory").HFWeights(str(source))
    with pytest.raises(AccessoryError, match=r"model\.layers\.0\.self_attn\.[kqv]_proj\.bias"):
        hf_sources(weights, args, str(source))


@pytest.mark.parametrize("tool, flags", [
    ("convert_hf_to_accessory.py", ["--src", "{tmp}", "--dst", "{tmp}/out"]),
    ("convert_weights_to_hf.py", ["--src_weights_path", "{tmp}/absent", "--src_config_path", "{tiny}/params.json",
                                  "--tokenizer_path", "{tiny}/tokenizer.model", "--dst_weights_path", "{tmp}/out"]),
])
def test_user_error_is_one_line(tool, flags, tiny_dir, tmp_path):
    result = run_python([f"tools/{tool}", *(f.format(tmp=tmp_path, tiny=tiny_dir) for f in flags)], check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path) in lines[0], result.stderr


@pytest.mark.slow
def test_lora_is_merged_into_the_hf_weights(tiny_dir, tmp_path):
    """A llama_peft checkpoint with trained (non-zero) LoRA factors converts with LoRA folded in."""
    base = to_accessory(save_hf(random_hf_model(tiny_dir), tmp_path / "hf_base", tiny_dir), tmp_path / "base")
    peft_config = tmp_path / "lora.json"
    peft_config.write_text(json.dumps({"lora_rank": 4, "lora_alpha": 8, "bias_tuning": False, "norm_tuning": True}))
    model = accessory.load([str(base)], [str(base / "params.json"), str(peft_config)], llama_type="llama_peft")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_b" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    trainable = {name: p.detach() for name, p in model.named_parameters() if model.is_trainable(name)}
    save_shard(trainable, tmp_path / "delta", 0, 1, "consolidated")
    (tmp_path / "delta" / "meta.json").write_text(json.dumps({"llama_type": "llama_peft"}))
    tokens = torch.randint(0, TINY_VOCAB, (2, 19), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model.llma(tokens)
    run_python(["tools/convert_weights_to_hf.py", "--src_weights_path", base, tmp_path / "delta", "--src_config_path",
                base / "params.json", peft_config, "--tokenizer_path", base / "tokenizer.model",
                "--dst_weights_path", tmp_path / "hf", "--dtype", "fp32"])
    _, logits = hf_logits(tmp_path / "hf", tokens)
    assert max_diff(logits, expected) <= 1e-4
