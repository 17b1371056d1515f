"""Tokenized samples as three flat tensors: compact in memory and in the cache, which `torch.load`
reads with `weights_only=True` (no pickled Python objects)."""
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

import torch

IGNORE_INDEX = -100  # label of a token that is not trained (prompt, role tags, padding)


@dataclass(frozen=True)
class TokenStore:
    tokens: torch.Tensor   # int32 [total]: all samples' token ids, back to back
    trained: torch.Tensor  # bool [total]: whether each token is trained
    offsets: torch.Tensor  # int64 [n + 1]: sample i is tokens[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_samples(cls, samples: Sequence[tuple[Sequence[int], Sequence[bool]]]) -> "TokenStore":
        """From (token ids, trained flags) pairs, as lists or tensors (compact while a big file is read)."""
        return cls(tokens=torch.cat([torch.as_tensor(ids, dtype=torch.int32) for ids, _ in samples]),
                   trained=torch.cat([torch.as_tensor(trained, dtype=torch.bool) for _, trained in samples]),
                   offsets=torch.tensor([0, *accumulate(len(ids) for ids, _ in samples)], dtype=torch.int64))

    @classmethod
    def concat(cls, stores: Sequence["TokenStore"]) -> "TokenStore":
        starts = accumulate((len(s.tokens) for s in stores[:-1]), initial=0)
        return cls(tokens=torch.cat([s.tokens for s in stores]),
                   trained=torch.cat([s.trained for s in stores]),
                   offsets=torch.cat([stores[0].offsets[:1]] + [s.offsets[1:] + start
                                                                 for s, start in zip(stores, starts)]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets.diff()

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        """`tokens` and `labels` (the token where trained, else IGNORE_INDEX), as 1-D LongTensors."""
        start, end = self.offsets[index:index + 2].tolist()
        tokens = self.tokens[start:end].long()
        return {"tokens": tokens, "labels": tokens.masked_fill(~self.trained[start:end], IGNORE_INDEX)}

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens, "trained": self.trained, "offsets": self.offsets}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "TokenStore":
        return cls(tokens=d["tokens"], trained=d["trained"], offsets=d["offsets"])
