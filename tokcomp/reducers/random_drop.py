"""Random token dropping: the baseline any learned or matched reduction must beat.

Keeps the protected tokens plus a uniformly random subset of the others, so that the
token count after the layer equals a reference reducer's (`kept` tokens). Seeded, so
a comparison run is repeatable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ops import select_tokens
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState


class RandomDrop(Reducer):
    kind = "random_drop"

    def __init__(self, drop: int, protected: int = 1, seed: int = 0):
        super().__init__(protected)
        self.drop = drop
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - min(self.drop, tokens_in - self.protected)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        batch, tokens = x.shape[:2]
        keep = self.kept_tokens(tokens)
        if keep == tokens:
            return x, state
        noise = torch.rand(batch, tokens - self.protected, generator=self._generator).to(x.device)
        chosen = noise.topk(keep - self.protected, dim=-1).indices + self.protected
        head = torch.arange(self.protected, device=x.device).expand(batch, -1)
        index = torch.cat([head, chosen.sort(dim=-1).values], dim=1)
        return select_tokens(x, state, index)

    def describe(self) -> dict:
        return {**super().describe(), "drop": self.drop, "seed": self.seed}
