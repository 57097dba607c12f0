"""Adjacent token merging (A-ToMe, Li et al., Interspeech 2023): merge neighbours in time.

Re-implemented from the paper's description: only neighbouring tokens merge, chosen by the
cosine similarity of their attention keys, so time order is kept and a run of similar
frames (silence, a held vowel) shrinks layer after layer: an adaptive frame rate.

The rule, built on ToMe's matching machinery (reducers/matching.py) with the pairs
restricted to neighbours:
1. metric = attention keys averaged over heads, L2-normalised;
2. tokens alternate A (even index), B (odd index) in their current (time) order; every A
   token may move into its left or its right neighbour, both B tokens; its score is the
   larger of the two cosines (a tie goes to the left, the earlier neighbour); protected
   tokens and padding never move or receive;
3. by ratio: each sample moves its layer's rate of its own reducible tokens (reducers/
   rate.py; at most half of them: its A tokens), the best-scoring A tokens first
   (ties: the earlier one). By threshold: every A token scoring above the threshold
   moves, up to that same count (the cap);
4. a moving A token merges whole, size-weighted, into its chosen neighbour.

Chains: only A tokens move and only B tokens receive, so within one layer a group is
either a B token alone, a B token and one neighbour, or a B token and both its neighbours
(A-B-A: three consecutive tokens). Groups never overlap and never skip a token, so they
are contiguous runs in time; longer runs form over layers. Each output token takes its B
token's position and the output is sorted by position: time order.

Deterministic and batch-invariant: every choice is per sample, with stable sorts; by
ratio the output length is the longest sample's count (static, from the tensor's shape).
By threshold the counts depend on the data: the output is as long as the batch's longest
sample, a data-dependent shape (eager PyTorch only; use the ratio for torch.compile and
export).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.errors import TokcompError
from tokcomp.reducers.apply import in_input_order
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.matching import Matching, alternate, merge_matched
from tokcomp.reducers.rate import Rate, at_most
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count


def adjacent_matching(metric: Tensor, state: TokenState) -> Matching:
    """Each A token's best neighbour (left or right B token); metric [B, N, d], L2-normalised.

    `scores` holds the two neighbour scores [B, Na, 2] (left, right), not an A x B matrix.
    """
    free = state.free()
    forbidden = torch.finfo(metric.dtype).min
    edge = (metric[:, :-1] * metric[:, 1:]).sum(dim=-1)  # cosine of tokens i and i + 1
    edge = torch.where(free[:, :-1] & free[:, 1:], edge, torch.full_like(edge, forbidden))
    # edges[j] is the edge (j - 1, j): token 2a has its left edge at 2a, its right edge at 2a + 1.
    outside = torch.full_like(edge[:, :1], forbidden)
    edges = torch.cat([outside, edge, outside], dim=1)
    a_tokens = (metric.shape[1] + 1) // 2
    left = alternate(edges, 0)[:, :a_tokens]
    right = alternate(edges, 1)[:, :a_tokens]
    scores = torch.stack([left, right], dim=-1)
    best, side = scores.max(dim=-1)  # ties: the left neighbour
    a_index = torch.arange(a_tokens, device=metric.device)
    partner = (a_index - 1 + side).clamp(min=0)  # B index of token 2a - 1 is a - 1, of 2a + 1 is a
    return Matching(scores, best, partner, forbidden)


class AdjacentMerge(Reducer):
    """Merge neighbouring tokens with similar keys; by the layer's rate, or above a threshold up to it."""

    kind = "adjacent_merge"

    def __init__(self, rate: Rate, protected: int, threshold: float | None = None):
        super().__init__(rate, protected)
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise TokcompError(
                f"threshold {threshold} is not a cosine similarity", hint="choose a threshold in [-1, 1], e.g. 0.9"
            )
        self.threshold = threshold

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        matching = adjacent_matching(F.normalize(attn.key_metric(), dim=-1), state)
        removed = self.per_sample_removal(state, tokens)
        if self.threshold is None:
            length = self.kept_tokens(tokens)
            slots = tokens - length
        else:
            removed = at_most((matching.best > self.threshold).sum(dim=-1), removed)
            # Data-dependent output length: the batch's longest sample.
            slots = int(removed.max())
            length = int(torch.as_tensor(real_count(state, tokens) - removed).max())
        # ToMe's output order (kept A tokens, then B) back to time order.
        return in_input_order(*merge_matched(x, state, matching, removed, slots, length))

    def describe(self) -> dict:
        return {**super().describe(), "threshold": self.threshold}
