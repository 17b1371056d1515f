"""The LLaMA model (Llama 1/2/3, Code Llama shapes), tensor-parallel through fairscale's layers.

One file, read top to bottom, in the shape of Meta's reference `llama/model.py`: the arguments as
a dataclass, then RMSNorm, rotary embeddings, attention, feed-forward, the block and the model.
Variants (PEFT) compose onto these classes by passing another `LinearFactory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel import initialize as fs_init
from fairscale.nn.model_parallel.layers import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelArgs:
    """The keys of Meta's params.json (and of LLaMA2-Accessory's saved config.json)."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = -1  # taken from the tokenizer
    multiple_of: int = 256  # the feed-forward hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[float] = None  # linear scaling: positions are divided by this factor
    use_scaled_rope: bool = False  # Llama 3.1's frequency-dependent rope scaling
    max_seq_len: int = 2048
    max_batch_size: int = 32  # the KV cache's batch size for generation

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Meta's rule: 2/3 of 4·dim, times ffn_dim_multiplier, rounded up to multiple_of."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


def skip_init(tensor: torch.Tensor) -> torch.Tensor:
    """An init_method for weights that are about to be loaded: with TP > 1 fairscale then allocates
    the full master weight without touching its pages, so no time or memory is spent on it."""
    return tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()  # the statistic in fp32, as Meta and HF do, whatever the compute dtype
        normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_frequencies(args: ModelArgs, device: torch.device) -> torch.Tensor:
    """Inverse frequencies θ^(-2i/d) for the head dimension's pairs, in fp32."""
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, device=device).float() / args.head_dim))
    if args.use_scaled_rope:
        freqs = _llama31_scaled(freqs)
    if args.rope_scaling is not None:
        freqs = freqs / args.rope_scaling
    return freqs


def _llama31_scaled(freqs: torch.Tensor, factor: float = 8.0, low_freq_factor: float = 1.0,
                    high_freq_factor: float = 4.0, original_context: int = 8192) -> torch.Tensor:
    """Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended."""
    wavelen = 2 * math.pi / freqs
    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * freqs / factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / factor, blended)
    return torch.where(wavelen < high_freq_wavelen, freqs, scaled)


def rope_rotations(args: ModelArgs, positions: torch.Tensor) -> torch.Tensor:
    """The unit complex numbers e^(i·position·θ_j) for `positions` ([T] or [B, T]), complex64, shaped to
    broadcast over [B, T, heads, head_dim / 2]. Computed per forward: tiny next to the matmuls, and
    in fp32 whatever dtype the module is cast to."""
    angles = positions.float()[..., None] * rope_frequencies(args, positions.device)
    if angles.dim() == 2:  # [T, D/2] shared by the batch
        angles = angles[None]
    return torch.polar(torch.ones_like(angles), angles)[:, :, None, :]


def apply_rotary(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair (x[2i], x[2i+1]), read as a complex number: Meta's layout. One
    complex multiply is several times faster on CPU than the same rotation in real arithmetic."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)


def attention_mask(segment_ids: Optional[torch.Tensor], q_len: int, kv_len: int,
                   device: torch.device) -> Optional[torch.Tensor]:
    """None when plain causal attention from position 0 applies (SDPA's fastest path); otherwise a
    boolean [B or 1, 1, q_len, kv_len] mask: causal, offset for a KV cache, and within a packed sample."""
    if segment_ids is None and q_len == kv_len:
        return None
    offset = kv_len - q_len
    causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=offset)
    if segment_ids is None:
        return causal[None, None]
    same_sample = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same_sample & causal)[:, None]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, linear: "LinearFactory"):
        super().__init__()
        mp = fs_init.get_model_parallel_world_size()
        self.n_local_heads = args.n_heads // mp
        self.n_local_kv_heads = args.kv_heads // mp
        self.head_dim = args.head_dim
        self.wq = linear.column(args.dim, args.n_heads * self.head_dim, "wq")
        self.wk = linear.column(args.dim, args.kv_heads * self.head_dim, "wk")
        self.wv = linear.column(args.dim, args.kv_heads * self.head_dim, "wv")
        self.wo = linear.row(args.n_heads * self.head_dim, args.dim, "wo")
        self.cache_k: Optional[torch.Tensor] = None
        self.cache_v: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, mask: Optional[torch.Tensor],
                cache_pos: Optional[int] = None) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        q, k = apply_rotary(q, rotations), apply_rotary(k, rotations)
        if cache_pos is not None:
            k, v = self._extend_cache(k, v, cache_pos)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.n_local_kv_heads != self.n_local_heads)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))

    def _extend_cache(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[1]
        if self.cache_k is None:
            raise RuntimeError("call Transformer.setup_cache() before forward_inference()")
        self.cache_k[: k.shape[0], start:end] = k
        self.cache_v[: v.shape[0], start:end] = v
        return self.cache_k[: k.shape[0], :end], self.cache_v[: v.shape[0], :end]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) · w3 x)."""

    def __init__(self, args: ModelArgs, linear: "LinearFactory"):
        super().__init__()
        hidden = args.ffn_hidden_dim
        self.w1 = linear.column(args.dim, hidden, "w1")
        self.w2 = linear.row(hidden, args.dim, "w2")
        self.w3 = linear.column(args.dim, hidden, "w3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs, linear: "LinearFactory"):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, linear)
        self.feed_forward = FeedForward(args, linear)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, mask: Optional[torch.Tensor],
                cache_pos: Optional[int] = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rotations, mask, cache_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class LinearFactory:
    """Builds the tensor-parallel projections. Plain fairscale layers by default; a variant
    passes its own factory to swap in other projections without the model's code knowing."""

    def __init__(self, args: ModelArgs, init_method=skip_init):
        self.args = args
        self.init_method = init_method

    def column(self, in_features: int, out_features: int, name: str) -> nn.Module:
        return ColumnParallelLinear(in_features, out_features, bias=False, gather_output=False,
                                    init_method=self.init_method)

    def row(self, in_features: int, out_features: int, name: str) -> nn.Module:
        return RowParallelLinear(in_features, out_features, bias=False, input_is_parallel=True,
                                 init_method=self.init_method)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, linear: Optional[LinearFactory] = None, init_method=skip_init):
        super().__init__()
        self.args = args
        linear = linear or LinearFactory(args, init_method)
        self.tok_embeddings = ParallelEmbedding(args.vocab_size, args.dim, init_method=init_method)
        self.layers = nn.ModuleList(TransformerBlock(i, args, linear) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = ColumnParallelLinear(args.dim, args.vocab_size, bias=False, gather_output=True,
                                           init_method=init_method)
        self.gradient_checkpointing = False

    def forward(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Training/scoring forward: tokens [B, T] -> logits [B, T, vocab] (full vocabulary on every
        TP rank). Packed rows pass per-token `positions` and `segment_ids` (attention stays within a segment)."""
        return self.output(self.final_hidden(tokens, positions, segment_ids))

    def final_hidden(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                     segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Everything but the output layer: the normalized last hidden states [B, T, dim]."""
        h = self.tok_embeddings(tokens)
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        rotations = rope_rotations(self.args, positions)
        mask = attention_mask(segment_ids, tokens.shape[1], tokens.shape[1], tokens.device)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(layer, h, rotations, mask, use_reentrant=False)
            else:
                h = layer(h, rotations, mask)
        return self.norm(h)

    @torch.inference_mode()
    def forward_inference(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Generation with the KV cache: tokens [B, T] at positions start_pos.. -> logits of the last token."""
        seqlen = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        rotations = rope_rotations(self.args, torch.arange(start_pos, start_pos + seqlen, device=tokens.device))
        mask = attention_mask(None, seqlen, start_pos + seqlen, tokens.device)
        for layer in self.layers:
            h = layer(h, rotations, mask, cache_pos=start_pos)
        return self.output(self.norm(h[:, -1:]))[:, 0].float()

    def setup_cache(self, max_batch_size: int, max_seq_len: int) -> None:
        """Allocate (or reallocate) every layer's KV cache on the model's device and dtype."""
        param = self.output.weight
        for layer in self.layers:
            attn = layer.attention
            shape = (max_batch_size, max_seq_len, attn.n_local_kv_heads, attn.head_dim)
            attn.cache_k = torch.zeros(shape, device=param.device, dtype=param.dtype)
            attn.cache_v = torch.zeros(shape, device=param.device, dtype=param.dtype)
