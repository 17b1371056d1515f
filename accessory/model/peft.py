"""`llama_peft`: the one LLaMA with parameter-efficient finetuning, as LLaMA2-Accessory's llama_peft.

Every projection of the blocks (wq wk wv wo w1 w2 w3) becomes a PEFT projection, swapped in through
the model's `LinearFactory`:

    y = x Wᵀ  [+ b if bias_tuning]  [+ scale · B A dropout(x) for the lora_targets, if lora_rank > 0]

LoRA is tensor-parallel like the base: for a column-parallel W, A is replicated (it sees the whole
input) and B is column-parallel; for a row-parallel W, A is row-parallel (its partial products
are summed across ranks) and B replicated. The checkpoint loader derives splits from these layer
types, so PEFT checkpoints reshard across model-parallel sizes. B and the biases start at zero: a
fresh model computes exactly the base model. Parameter names (`wq.lora_a.weight`, `wq.lora_b.weight`,
`wq.bias`) are LLaMA2-Accessory's, so its checkpoints load. Trainable: LoRA factors, biases, and the
RMSNorm weights if norm_tuning; everything else is frozen.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel.layers import ColumnParallelLinear, RowParallelLinear
from fairscale.nn.model_parallel.mappings import copy_to_model_parallel_region, reduce_from_model_parallel_region
from torch import nn

from accessory.errors import AccessoryError
from accessory.model.llama import LinearFactory, ModelArgs, Transformer, skip_init

if TYPE_CHECKING:
    from accessory.model.meta import MetaModel

PROJECTIONS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
LORA_INIT_STD = 0.02  # LLaMA2-Accessory's truncated-normal init of A


@dataclass
class PeftArgs(ModelArgs):
    """params.json keys plus LLaMA2-Accessory's llama_peft keys (lora_rank, bias_tuning) and ours."""

    lora_rank: int = -1  # <= 0: no LoRA
    lora_alpha: Optional[float] = None  # scale = alpha / rank; None: alpha = rank (scale 1, as LLaMA2-Accessory)
    lora_dropout: float = 0.0
    lora_targets: Sequence[str] = PROJECTIONS
    bias_tuning: bool = True
    norm_tuning: bool = True

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        unknown = sorted(set(self.lora_targets) - set(PROJECTIONS))
        if unknown:
            raise AccessoryError(f"llama_config: lora_targets has unknown projections {unknown}; "
                                 f"choose among {', '.join(PROJECTIONS)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise AccessoryError(f"llama_config: lora_dropout={self.lora_dropout} must be in [0, 1)")

    @property
    def lora_scale(self) -> float:
        return 1.0 if self.lora_alpha is None else self.lora_alpha / self.lora_rank


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    scale: float
    dropout: float
    init_a: Callable[[torch.Tensor], torch.Tensor]  # applied to the full (unsplit) A


class PeftProjection:
    """What the column- and row-parallel PEFT projections share; mixed into fairscale's layers so
    that the weight keeps its name, split and loading."""

    weight: nn.Parameter
    bias: Optional[nn.Parameter]

    def _attach(self, lora: Optional[LoraSpec], lora_a: Optional[nn.Module], lora_b: Optional[nn.Module]) -> None:
        self.lora_a, self.lora_b = lora_a, lora_b
        self.lora_scale = lora.scale if lora else 0.0
        self.lora_dropout = lora.dropout if lora else 0.0
        self.nf4: Optional[nn.Module] = None  # the NF4 base under QLoRA (quantize_base)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) if self.nf4 is None else self.nf4(x)

    def _add_tuned(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`out` plus the bias and the LoRA branch of input `x` (both exactly zero when fresh)."""
        if self.bias is not None:
            out = out + self.bias
        if self.lora_a is not None:
            # Dropout draws from the default generator, which main_finetune seeds alike on every rank:
            # replicated inputs get the same mask on all tensor-parallel ranks, so replicated A stays equal.
            x = F.dropout(x, self.lora_dropout, self.training)
            out = out + self.lora_b(self.lora_a(x)) * self.lora_scale
        return out

    @torch.no_grad()
    def merge_lora_(self) -> None:
        """Fold scale·B·A into the weight (computed in fp32) and zero B: same function, no LoRA left.
        Works on each rank's shard: B_local·A (column) and B·A_local (row) are the weight's own slice."""
        if self.lora_a is None:
            return
        delta = self.lora_b.weight.float() @ self.lora_a.weight.float() * self.lora_scale
        self.weight.copy_(self.weight.float() + delta)
        self.lora_b.weight.zero_()


class ColumnParallelPeft(PeftProjection, ColumnParallelLinear):
    def __init__(self, in_features: int, out_features: int, bias: bool, lora: Optional[LoraSpec], init_method):
        super().__init__(in_features, out_features, bias=bias, gather_output=False, init_method=init_method)
        lora_a = lora_b = None
        if lora:
            lora_a = nn.Linear(in_features, lora.rank, bias=False)
            lora.init_a(lora_a.weight)
            lora_b = ColumnParallelLinear(lora.rank, out_features, bias=False, gather_output=False,
                                          init_method=nn.init.zeros_)
        self._attach(lora, lora_a, lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_tuned(self._base(copy_to_model_parallel_region(x)), x)


class RowParallelPeft(PeftProjection, RowParallelLinear):
    def __init__(self, in_features: int, out_features: int, bias: bool, lora: Optional[LoraSpec], init_method):
        super().__init__(in_features, out_features, bias=bias, input_is_parallel=True, init_method=init_method)
        lora_a = lora_b = None
        if lora:
            lora_a = RowParallelLinear(in_features, lora.rank, bias=False, input_is_parallel=True,
                                       init_method=lora.init_a)
            lora_b = nn.Linear(lora.rank, out_features, bias=False)
            nn.init.zeros_(lora_b.weight)
        self._attach(lora, lora_a, lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias is added once, after the sum over ranks (as in fairscale's RowParallelLinear)
        return self._add_tuned(reduce_from_model_parallel_region(self._base(x)), x)


class PeftLinearFactory(LinearFactory):
    """The block projections as PEFT projections. A is drawn, in construction order and over the
    full tensor, from a generator seeded with torch's seed (main_finetune sets --seed on every
    rank): the same A on every data- and tensor-parallel rank, at any model-parallel size."""

    def __init__(self, args: PeftArgs, init_method=skip_init):
        super().__init__(args, init_method)
        generator = torch.Generator().manual_seed(torch.initial_seed())
        self.init_a = functools.partial(nn.init.trunc_normal_, std=LORA_INIT_STD, a=-2 * LORA_INIT_STD,
                                        b=2 * LORA_INIT_STD, generator=generator)

    def column(self, in_features: int, out_features: int, name: str) -> nn.Module:
        return ColumnParallelPeft(in_features, out_features, self.args.bias_tuning, self._lora(name), self.init_method)

    def row(self, in_features: int, out_features: int, name: str) -> nn.Module:
        return RowParallelPeft(in_features, out_features, self.args.bias_tuning, self._lora(name), self.init_method)

    def _lora(self, name: str) -> Optional[LoraSpec]:
        args = self.args
        if args.lora_rank <= 0 or name not in args.lora_targets:
            return None
        return LoraSpec(args.lora_rank, args.lora_scale, args.lora_dropout, self.init_a)


def build(args: PeftArgs, init_method=skip_init) -> Transformer:
    return Transformer(args, PeftLinearFactory(args, init_method), init_method)


def _module_and_param(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module.rpartition(".")[2], param


def is_added(name: str) -> bool:
    """LoRA factors and biases: absent from base checkpoints."""
    module, param = _module_and_param(name)
    return module in ("lora_a", "lora_b") or param == "bias"


def is_trainable(args: PeftArgs, name: str) -> bool:
    module, _ = _module_and_param(name)
    return is_added(name) or (args.norm_tuning and module.endswith("norm"))


@dataclass
class MergedCheckpoint:
    """A PEFT model with LoRA folded in: what to save and how to load it back."""

    llama_type: str  # llama, or llama_peft without LoRA when biases were tuned (plain llama has none)
    args: ModelArgs
    state: Dict[str, torch.Tensor]  # this model-parallel rank's tensors, `llma.`-prefixed


def merge_lora(model: "MetaModel") -> MergedCheckpoint:
    """Fold every projection's LoRA into its weight, in place (the model still computes the same),
    and return the weights without the LoRA factors, with the llama_type and config that load them."""
    args = model.args
    if not isinstance(args, PeftArgs):
        raise AccessoryError(f"llama_type {model.llama_type} has no LoRA to merge: load the model as llama_peft")
    for module in model.modules():
        if isinstance(module, PeftProjection):
            module.merge_lora_()
    if args.bias_tuning:
        llama_type = "llama_peft"
        merged_args: ModelArgs = dataclasses.replace(args, lora_rank=-1, lora_alpha=None, lora_dropout=0.0)
    else:
        llama_type = "llama"
        merged_args = ModelArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ModelArgs)})
    state = {name: param.detach() for name, param in model.named_parameters()
             if _module_and_param(name)[0] not in ("lora_a", "lora_b")}
    return MergedCheckpoint(llama_type, merged_args, state)


def check_quant_support(compute_dtype: torch.dtype) -> None:
    """--quant's requirements, checked before anything is built: bitsandbytes, and on a machine
    without CUDA its CPU kernels (0.50 has them), tried on a tiny layer. On CUDA nothing is
    allocated here: the ranks have not picked their GPUs yet."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise AccessoryError("--quant (QLoRA) needs bitsandbytes: pip install bitsandbytes") from None
    if torch.cuda.is_available():
        return
    try:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=compute_dtype, quant_type="nf4").to("cpu")
        layer(torch.zeros(2, 64, dtype=compute_dtype))
    except Exception as error:  # whatever bitsandbytes raises where its kernels are missing
        raise AccessoryError(f"--quant (QLoRA): bitsandbytes {bnb.__version__} cannot run NF4 on this CPU "
                             f"({type(error).__name__}): use a CUDA GPU, or bitsandbytes 0.50 or newer") from None


def quantize_base(model: nn.Module, compute_dtype: torch.dtype, device: torch.device) -> None:
    """QLoRA: every PEFT projection's frozen weight becomes NF4 (double-quantized) on `device`; LoRA,
    biases and norms keep their precision. Quantization is deterministic and every rank quantizes the
    same loaded weights, so all data-parallel ranks hold the same quantized base."""
    import bitsandbytes as bnb

    projections = [m for m in model.modules() if isinstance(m, PeftProjection)]
    if not projections:
        raise AccessoryError("--quant quantizes the frozen base under LoRA: use --llama_type llama_peft")
    for module in projections:
        out_features, in_features = module.weight.shape  # this rank's shard
        nf4 = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=compute_dtype,
                                quant_type="nf4", device="meta")
        nf4.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4",
                                       compress_statistics=True)
        del module.weight
        module.nf4 = nf4.to(device)  # bitsandbytes quantizes on the move to the device
