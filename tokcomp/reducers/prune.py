"""Class-attention pruning: keep the tokens the CLS token attends to most.

As X' = T X, pruning's T is a row selection: one 1 per kept token, nothing for the
dropped ones (their information is lost). Importance is the CLS attention averaged
over heads (`AttentionInfo.cls_attention`, the rule of EViT and DiffRate). Protected
tokens always stay and padding never counts (reducers/ranking.py). Kept tokens stay in
their original order.
"""

from __future__ import annotations

from torch import Tensor

from tokcomp.reducers.apply import select
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ranking import keep_most_important
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count


def prune_to_most_important(
    reducer: Reducer, x: Tensor, state: TokenState, importance: Tensor
) -> tuple[Tensor, TokenState]:
    """Each sample keeps all but `reducer`'s removal of its tokens, the most important ones, in order."""
    tokens = x.shape[1]
    length = reducer.kept_tokens(tokens)
    keep = real_count(state, tokens) - reducer.per_sample_removal(state, tokens)
    kept, _ = keep_most_important(importance, state, keep, length, by_position=True)
    return select(x, state, kept, null=state.real is not None)


class ClassAttentionPrune(Reducer):
    """Drop the tokens the CLS token attends to least."""

    kind = "prune"
    uses_cls_attention = True

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        return prune_to_most_important(self, x, state, attn.cls_attention())
