"""Random token dropping: the baseline any learned or matched reduction must beat.

Keeps the protected tokens plus a uniformly random subset of the others, at the rates
that make it keep as many tokens as the reducer it is compared with. Seeded, so a
comparison run is repeatable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.prune import prune_to_most_important
from tokcomp.reducers.rate import Count, Rate
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState


class RandomDrop(Reducer):
    kind = "random_drop"

    def __init__(self, rate: Rate, protected: int, seed: int = 0):
        super().__init__(rate, protected)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def limit(reducible: Count) -> Count:
        # The rate comes from another reducer's counts, which already respect that reducer's cap.
        return reducible

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        noise = torch.rand(x.shape[:2], generator=self._generator).to(x.device)
        return prune_to_most_important(self, x, state, noise)

    def describe(self) -> dict:
        return {**super().describe(), "seed": self.seed}
