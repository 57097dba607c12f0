"""Zero-TPrune (Wang et al., CVPR 2024): importance from the attention graph, then
similarity-based pruning among the less important tokens. Training-free.

Re-implemented from the paper's description:
1. I-stage: the head-averaged attention matrix A (row i: how query i spreads its
   attention) is the adjacency matrix of a graph over the tokens. Weighted PageRank
   iterates s <- A^T s from a uniform start: a token is important when important tokens
   attend to it. Padding starts at 0 and receives nothing.
2. S-stage: the reducible tokens are split by that importance into the more important
   half (targets) and the less important half (candidates). Each candidate is scored by
   its cosine similarity (attention keys, head-averaged) to its most similar target; the
   r most similar candidates are pruned: what they carry is already there.
Pruning: kept tokens keep their order and size; protected tokens always stay. The
paper's refinements of the attention graph (emphasising informative regions, filtering
heads by variance) are not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.errors import TokcompError
from tokcomp.reducers.apply import inverse
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.prune import prune_to_most_important
from tokcomp.reducers.ranking import importance_order
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, reducible_tokens

DEFAULT_ITERATIONS = 30


def weighted_pagerank(attention: Tensor, real: Tensor | None, iterations: int) -> Tensor:
    """Importance [B, N]: `iterations` steps of s <- A^T s from the uniform distribution over real tokens."""
    start = torch.ones_like(attention[:, 0]) if real is None else real.to(attention.dtype)
    score = start / start.sum(dim=-1, keepdim=True)
    for _ in range(iterations):
        score = torch.bmm(score[:, None, :], attention)[:, 0]  # rows of A sum to 1: total stays 1
    return score


class ZeroTPrune(Reducer):
    kind = "zero_tprune"

    def __init__(self, rate: Rate, protected: int, iterations: int = DEFAULT_ITERATIONS):
        super().__init__(rate, protected)
        if iterations < 1:
            raise TokcompError(f"iterations must be >= 1, got {iterations}", hint="Weighted PageRank needs at least one step")
        self.iterations = iterations

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        importance = weighted_pagerank(attn.attention_matrix(), state.real, self.iterations)
        # Split the reducible tokens at the median importance: protected tokens rank first.
        rank = inverse(importance_order(importance, state))
        reducible = reducible_tokens(state, self.protected, tokens)
        important = (reducible + 1) // 2
        cut = self.protected + (important[:, None] if isinstance(important, Tensor) else important)
        free = state.free()
        target = free & (rank < cut)
        candidate = free & (rank >= cut)
        metric = F.normalize(attn.key_metric(), dim=-1)
        similarity = metric @ metric.transpose(-1, -2)
        lowest = torch.finfo(similarity.dtype).min
        redundancy = torch.where(target[:, None, :], similarity, torch.full_like(similarity, lowest)).amax(dim=-1)
        # Keep priority: non-candidates always before candidates; among candidates the least redundant first.
        keep_priority = torch.where(candidate, -redundancy, torch.full_like(redundancy, 2.0))
        return prune_to_most_important(self, x, state, keep_priority)

    def describe(self) -> dict:
        return {**super().describe(), "iterations": self.iterations}
