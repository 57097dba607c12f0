"""ToMe: bipartite soft matching (Bolya et al., ICLR 2023).

Re-implemented from the description in shared/reference/methods.md:
1. metric = attention keys averaged over heads, L2-normalised;
2. alternating split A = even tokens, B = odd tokens; scores S = A B^T;
   CLS (A[0]) is never a source; a distillation token (B[0]) never a destination;
3. r <- min(r, (N - protected) // 2);
4. every A token picks its best B partner; the r A tokens with the highest scores
   merge into their partners (several may share one);
5. size-weighted average; output order [unmerged A in index order, all of B].
With padding (text), a real token never pairs with padding, and padding pairs with
padding first (so the budget goes to real merges only once padding is used up).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ops import bipartite_merge_sum, weighted_merge
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# Score for padding-padding pairs: above any cosine similarity, so padding merges first.
_PAD_PAIR_SCORE = 2.0


def bipartite_matching(
    metric: Tensor, r: int, protect_cls: bool, protect_distill: bool, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Choose merges. metric [B, N, d] (normalised). Returns (unmerged, src, dst) indices.

    unmerged [B, Na - r] and src [B, r] index A = tokens 0, 2, 4, ...; dst [B, r] indexes
    B = tokens 1, 3, 5, ...; unmerged is sorted so A keeps its original order.
    """
    a, b = metric[:, 0::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    neg_inf = torch.finfo(scores.dtype).min
    if mask is not None:
        a_real, b_real = mask[:, 0::2, None] > 0, mask[:, None, 1::2] > 0
        scores = torch.where(a_real & b_real, scores, torch.full_like(scores, neg_inf))
        scores = torch.where(~a_real & ~b_real, torch.full_like(scores, _PAD_PAIR_SCORE), scores)
    if protect_cls:
        row = torch.arange(scores.shape[1], device=scores.device)[None, :, None] == 0
        scores = scores.masked_fill(row, neg_inf)
    if protect_distill:
        col = torch.arange(scores.shape[2], device=scores.device)[None, None, :] == 0
        scores = scores.masked_fill(col, neg_inf)

    best_score, best_dst = scores.max(dim=-1)
    order = best_score.argsort(dim=-1, descending=True, stable=True)
    src = order[:, :r]
    unmerged = order[:, r:].sort(dim=-1).values
    dst = best_dst.gather(1, src)
    return unmerged, src, dst


class ToMe(Reducer):
    kind = "tome"

    def __init__(self, r: int, protected: int = 1):
        super().__init__(protected)
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        self.r = r

    def effective_r(self, tokens_in: int) -> int:
        return max(0, min(self.r, (tokens_in - self.protected) // 2))

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - self.effective_r(tokens_in)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        r = self.effective_r(x.shape[1])
        if r == 0:
            return x, state
        metric = F.normalize(attn.key_metric(), dim=-1)
        unmerged, src, dst = bipartite_matching(
            metric, r, protect_cls=self.protected >= 1, protect_distill=self.protected >= 2, mask=state.mask
        )
        return weighted_merge(x, state, partial(bipartite_merge_sum, unmerged=unmerged, src=src, dst=dst))

    def describe(self) -> dict:
        return {**super().describe(), "r": self.r}
