"""Hugging Face Llama <-> Meta layout: key names, the q/k rotary permutation and config.json.

HF applies rotary embeddings to the two halves of each head ("rotate_half"), Meta to interleaved
pairs; HF's conversion script therefore permutes the rows of wq and wk. `to_hf_rows` is that
permutation and `from_hf_rows` its exact inverse.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch

from accessory.errors import AccessoryError
from accessory.model.llama import ModelArgs

# Meta key (per layer, after "layers.N.") -> HF key (after "model.layers.N.")
LAYER_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOP_KEYS = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved (x0, x1), (x2, x3)... pairs of each head -> HF's halves layout."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def from_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_names(n_layers: int) -> Dict[str, str]:
    """Meta key -> HF key, for every weight of a Llama with `n_layers` layers."""
    mapping = dict(TOP_KEYS)
    for i in range(n_layers):
        mapping.update({f"layers.{i}.{meta}": f"model.layers.{i}.{hf}" for meta, hf in LAYER_KEYS.items()})
    return mapping


def to_hf_tensor(meta_key: str, w: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """One full Meta-named tensor in HF's layout: the rows of wq and wk permuted, others as they are."""
    return _permute_qk(meta_key, w, args, to_hf_rows)


def from_hf_tensor(meta_key: str, w: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """The inverse of `to_hf_tensor`."""
    return _permute_qk(meta_key, w, args, from_hf_rows)


def _permute_qk(meta_key: str, w: torch.Tensor, args: ModelArgs, permute) -> torch.Tensor:
    if meta_key.endswith("attention.wq.weight"):
        return permute(w, args.n_heads)
    if meta_key.endswith("attention.wk.weight"):
        return permute(w, args.kv_heads)
    return w


def hf_sources(hf_keys: Iterable[str], args: ModelArgs, source: str = "the HF checkpoint") -> Dict[str, str]:
    """Meta key -> the key of an HF checkpoint holding it (lm_head falls back to the embedding when tied).
    A missing Llama weight, or an HF weight that a Llama does not have (biases...), is an error."""
    keys = set(hf_keys)
    mapping = hf_names(args.n_layers)
    if "lm_head.weight" not in keys:  # tied embeddings
        mapping["output.weight"] = "model.embed_tokens.weight"
    missing = [k for k in mapping.values() if k not in keys]
    if missing:
        raise AccessoryError(f"{source} lacks {len(missing)} Llama weights, e.g. {missing[0]}")
    unknown = sorted(k for k in keys - set(mapping.values()) if not k.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise AccessoryError(f"{source} has {len(unknown)} weights that a Llama does not, e.g. {unknown[0]}: "
                             "only plain Llama checkpoints (no biases, no extra modules) convert")
    return mapping


def meta_to_hf(state: Dict[str, torch.Tensor], args: ModelArgs) -> Dict[str, torch.Tensor]:
    """Full (unsplit) Meta-named tensors -> HF-named tensors."""
    return {hf_key: to_hf_tensor(meta_key, state[meta_key], args).contiguous()
            for meta_key, hf_key in hf_names(args.n_layers).items()}


def hf_to_meta(hf: Dict[str, torch.Tensor], args: ModelArgs, source: str = "the HF checkpoint") -> Dict[str, torch.Tensor]:
    return {meta_key: from_hf_tensor(meta_key, hf[hf_key], args).contiguous()
            for meta_key, hf_key in hf_sources(hf, args, source).items()}


def hf_config(args: ModelArgs, dtype: str = "float32") -> dict:
    """config.json for transformers' LlamaForCausalLM (read by transformers 4.x and 5.x)."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.ffn_hidden_dim, "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads, "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype,
    }
    if args.use_scaled_rope and args.rope_scaling is not None:
        raise AccessoryError("rope_scaling and use_scaled_rope together have no transformers equivalent")
    if args.rope_scaling is not None:
        config["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": args.rope_scaling}
    if args.use_scaled_rope:
        config["rope_scaling"] = {"rope_type": "llama3", **LLAMA31_ROPE}
    return config


def params_from_hf_config(config: dict, source: str = "config.json") -> dict:
    """Meta params.json values for a transformers Llama config.json (4.x or 5.x keys)."""
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", dim // n_heads) != dim // n_heads:
        raise AccessoryError(f"{source}: head_dim {config['head_dim']} != hidden_size / num_attention_heads")
    rope = dict(config.get("rope_parameters") or {})
    rope.update(config.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    params = {"dim": dim, "n_layers": config["num_hidden_layers"], "n_heads": n_heads,
              "n_kv_heads": config.get("num_key_value_heads", n_heads), "norm_eps": config["rms_norm_eps"],
              "rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
              "max_seq_len": config.get("max_position_embeddings", 2048)}
    if rope_type == "linear":
        params["rope_scaling"] = float(rope["factor"])
    elif rope_type == "llama3":
        if any(float(rope.get(k, v)) != v for k, v in LLAMA31_ROPE.items()):
            raise AccessoryError(f"{source}: llama3 rope scaling with non-default parameters {rope} is not supported")
        params["use_scaled_rope"] = True
    elif rope_type != "default":
        raise AccessoryError(f"{source}: rope type '{rope_type}' is not supported (default, linear, llama3 are)")
    params.update(_ffn_params(dim, config["intermediate_size"], source))
    return params


def _ffn_params(dim: int, hidden: int, source: str) -> dict:
    """multiple_of / ffn_dim_multiplier reproducing HF's intermediate_size under Meta's rule."""
    base = int(2 * 4 * dim / 3)
    for multiple_of in (256, 1024, 4096, 128, 64, 32, 16, 8, 4, 2, 1):
        if hidden % multiple_of:
            continue
        if multiple_of * ((base + multiple_of - 1) // multiple_of) == hidden:
            return {"multiple_of": multiple_of}
        args = ModelArgs(dim=dim, multiple_of=multiple_of, ffn_dim_multiplier=hidden / base)
        if args.ffn_hidden_dim == hidden:
            return {"multiple_of": multiple_of, "ffn_dim_multiplier": hidden / base}
    raise AccessoryError(f"{source}: intermediate_size {hidden} cannot be expressed with multiple_of/ffn_dim_multiplier")
