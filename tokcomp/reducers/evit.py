"""EViT (Liang et al., ICLR 2022): keep the attentive tokens, fuse the rest into one.

Re-implemented from the description in shared/reference/methods.md. To remove r tokens,
keep the N - r - 1 tokens the CLS token attends to most (protected ones always) and
fuse the other r + 1 into one token appended at the end, weighted by their CLS
attention a_i: x_fused = sum a_i x_i / sum a_i.

As X' = T X: selection rows for the kept tokens plus one fused row. The paper sums
a_i x_i without dividing by sum a_i, which relies on training to rescale; here the
fused token is the normalised average (training-free) and stands for every token it
absorbed (size = their total size), so token mass is conserved like in merging.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.prune import capped_r, split_by_importance
from tokcomp.reducers.transform import transform_tokens
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState


def fused_row_shares(importance: Tensor, dropped: Tensor, state: TokenState) -> Tensor:
    """Shares [B, M] of each dropped token in the fused row of T.

    transform_tokens weights a token by share * size * mask; share = c a_i / size_i makes
    that a_i * mask (the CLS attention already counts sizes under proportional
    attention), and c makes the fused size the dropped tokens' total real size.
    """
    attention = importance.gather(1, dropped).clamp_min(torch.finfo(importance.dtype).tiny)
    size = state.size.gather(1, dropped)
    real = torch.ones_like(size) if state.mask is None else state.mask.gather(1, dropped)
    total_size = (size * real).sum(dim=1, keepdim=True)
    total_attention = (attention * real).sum(dim=1, keepdim=True)
    scale = total_size / torch.where(total_attention > 0, total_attention, torch.ones_like(total_attention))
    return attention / size * scale


class EViT(Reducer):
    """Keep the N - r - 1 most attended tokens; fuse the r + 1 others into one token."""

    kind = "evit"

    def __init__(self, r: int, protected: int = 1):
        super().__init__(protected)
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        self.r = r

    def kept_tokens(self, tokens_in: int) -> int:
        # The cap (half the unprotected tokens) always leaves room for the fused token.
        return tokens_in - capped_r(self.r, tokens_in, self.protected)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        r = capped_r(self.r, tokens, self.protected)
        if r == 0:
            return x, state
        importance = attn.cls_attention()
        kept, dropped = split_by_importance(importance, tokens - r - 1, self.protected, state.mask)
        shares = fused_row_shares(importance, dropped, state)
        # Dropped tokens go only to the last output row: the fused token.
        assignment = torch.cat([shares.new_zeros(*dropped.shape, kept.shape[1]), shares[..., None]], dim=-1)
        return transform_tokens(x, state, kept, dropped, assignment)

    def describe(self) -> dict:
        return {**super().describe(), "r": self.r}
