"""The wrapper around the LLaMA: `MetaModel.llma`, so that state-dict keys read `llma.<Meta key>`
exactly as in LLaMA2-Accessory's checkpoints, and the training loss."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from accessory.distributed import groups
from accessory.model import get_llama_type
from accessory.model.cross_entropy import IGNORE_INDEX, linear_cross_entropy_sum
from accessory.model.llama import ModelArgs, skip_init


class MetaModel(nn.Module):
    def __init__(self, llama_type: str, args: ModelArgs, tokenizer=None, init_method=skip_init):
        super().__init__()
        self.llama_type = llama_type
        self.spec = get_llama_type(llama_type)
        self.args = args
        self.tokenizer = tokenizer
        self.llma = self.spec.build(args, init_method=init_method)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, positions: Optional[torch.Tensor] = None,
                segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The SUM of next-token cross-entropy over the target tokens (labels != -100), in fp32.
        The caller divides by the token count of the whole optimizer step, across accumulation
        and data-parallel ranks, so every token weighs the same."""
        hidden = self.llma.final_hidden(tokens, positions, segment_ids)
        # shift the (small) labels rather than slice the hidden states: the last position predicts nothing
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        # the output layer's matmul is fused with the loss, chunk by chunk: the logits are never whole
        vocab_group = groups.mp_group() if groups.mp_world() > 1 else None  # the output layer's vocabulary split
        return linear_cross_entropy_sum(hidden, self.llma.output.weight, targets, vocab_group)

    def is_trainable(self, name: str) -> bool:
        return self.spec.is_trainable(self.args, name.removeprefix("llma."))

    def is_added(self, name: str) -> bool:
        return self.spec.is_added(name.removeprefix("llma."))


