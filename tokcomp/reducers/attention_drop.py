"""Attention drop (FastV): drop the prompt tokens the last token attends to least.

Importance is the attention the last real token of each sample pays every token,
averaged over heads, recomputed for that one query row from q and k (fused kernels
return no probabilities). In a decoder the last token is the end of the question, so
this asks which context tokens the question reads. As X' = T X it is a row selection
(as reducers/prune.py): protected tokens (sinks, question, whatever a call's span leaves
out) always stay, kept tokens stay in input order, and unlike merging it may drop the
whole reducible span. Runs in decoder prefill (eager, never exported), so the output is
sized by what each sample keeps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.apply import select
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ranking import keep_most_important, pool_neighbours
from tokcomp.reducers.rate import Count, Rate
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count


def last_query_attention(attn: AttentionInfo, state: TokenState) -> Tensor:
    """Head-averaged attention [B, N] of each sample's last real token (highest position) to every token."""
    position = state.position if state.real is None else torch.where(state.real, state.position, -1)
    last = position.argmax(dim=-1)  # [B]
    batch, heads, _, dim = attn.query.shape
    query = attn.query.gather(2, last[:, None, None, None].expand(batch, heads, 1, dim))
    logits = torch.matmul(query, attn.key.transpose(-1, -2)) * attn.scale  # [B, H, 1, N]
    bias = attn.bias  # [B, 1, 1, N]: a key bias for every query (a decoder block's: its last token's row)
    if bias is not None and bias.shape[2] > 1:  # [B, 1, N, N]: the last token's row
        bias = bias.gather(2, last[:, None, None, None].expand(batch, 1, 1, bias.shape[-1]))
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)[:, 0]


class LastQueryAttentionDrop(Reducer):
    """Keep the reducible tokens the last token attends to most."""

    kind = "attention_drop"

    def __init__(self, rate: Rate, protected: int = 0, kernel: int = 1, pooling: str = "max"):
        super().__init__(rate, protected)
        self.kernel, self.pooling = kernel, pooling

    def describe(self) -> dict:
        return {**super().describe(), "kernel": self.kernel, "pooling": self.pooling}

    @staticmethod
    def limit(reducible: Count) -> Count:
        return reducible  # dropping (not merging): the whole span may go

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - self.removal(max(tokens_in - self.protected, 0))  # a short prompt: nothing reducible

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        keep = real_count(state, tokens) - self.per_sample_removal(state, tokens)
        # A call's own span (reducible_span) may protect more than the recipe's sink + question, so the
        # output is as long as the sample keeping most needs, not the static `kept_tokens(tokens)`.
        length = int(keep.max()) if isinstance(keep, Tensor) else keep
        importance = pool_neighbours(last_query_attention(attn, state), self.kernel, self.pooling)
        kept, _ = keep_most_important(importance, state, keep, length, by_position=True)
        return select(x, state, kept, null=state.real is not None)
