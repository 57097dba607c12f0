"""EViT (Liang et al., ICLR 2022): keep the attentive tokens, fuse the rest into one.

To remove r tokens, keep the n - r - 1 tokens the CLS token attends to most (protected
ones always) and fuse the other r + 1 into one token placed after them, weighted by their
CLS attention a_i: x_fused = sum a_i x_i / sum a_i.

As X' = T X: selection rows for the kept tokens plus one fused row. The paper sums
a_i x_i without dividing by sum a_i, which relies on training to rescale; here the
fused token is the normalised average (training-free) and stands for every token it
absorbed (size = their total size), so token mass is conserved like in merging.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.apply import merge
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ranking import keep_most_important
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count


def fusion_scale(importance: Tensor, state: TokenState, dropped: Tensor) -> Tensor:
    """Weight multipliers [B, N] that make the fused token the attention-weighted mean.

    `merge` weighs a token by scale * size (0 for padding); scale = c a_i / size_i makes
    that c a_i (the CLS attention already counts sizes under proportional attention), and
    c = (total size of the dropped tokens) / (their total attention) makes the fused size
    the dropped tokens' total size. Every other token keeps its own weight (scale 1).
    """
    attention = importance.clamp_min(torch.finfo(importance.dtype).tiny)
    weight = state.weight() * dropped
    total_attention = (attention * (weight > 0)).sum(dim=1, keepdim=True)
    shares = attention / state.size * weight.sum(dim=1, keepdim=True) / total_attention.clamp_min(torch.finfo(attention.dtype).tiny)
    return torch.where(dropped, shares, torch.ones_like(shares))


class EViT(Reducer):
    """Keep the n - r - 1 most attended tokens; fuse the r + 1 others into one token."""

    kind = "evit"
    uses_cls_attention = True

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        length = self.kept_tokens(tokens)
        removed = self.per_sample_removal(state, tokens)
        fused_row = real_count(state, tokens) - removed - 1  # each sample's last row
        importance = attn.cls_attention()
        kept, order = keep_most_important(importance, state, fused_row, length, by_position=True)
        slots = tokens - length + 1
        slot = torch.arange(slots, device=x.device)
        start = fused_row[:, None] if isinstance(fused_row, Tensor) else fused_row
        fused = order.gather(1, (start + slot).expand(x.shape[0], slots).clamp(max=tokens - 1))
        moving = slot < (removed[:, None] + 1 if isinstance(removed, Tensor) else removed + 1)
        fused = torch.where(moving, fused, torch.full_like(fused, tokens))
        dst = torch.as_tensor(fused_row, device=x.device).reshape(-1, 1).expand_as(fused)
        dropped = torch.zeros_like(state.position).scatter_add(1, fused.clamp(max=tokens - 1), moving.expand_as(fused).long()) > 0
        scale = fusion_scale(importance, state, dropped)
        return merge(x, state, kept, fused, dst, scale=scale, null=True)
