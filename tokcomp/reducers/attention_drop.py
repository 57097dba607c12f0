"""Attention drop (FastV): drop the prompt tokens the last token attends to least.

Importance is the attention the last real token of each sample pays every token,
averaged over heads, recomputed for that one query row from q and k (fused kernels
return no probabilities). In a decoder the last token is the end of the question, so
this asks which context tokens the question reads. As X' = T X it is a row selection
(reducers/prune.py): protected tokens (sinks, question) always stay, kept tokens stay
in input order, and unlike merging it may drop the whole reducible span.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.prune import prune_to_most_important
from tokcomp.reducers.rate import Count
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState


def last_query_attention(attn: AttentionInfo, state: TokenState) -> Tensor:
    """Head-averaged attention [B, N] of each sample's last real token (highest position) to every token."""
    position = state.position if state.real is None else torch.where(state.real, state.position, -1)
    last = position.argmax(dim=-1)  # [B]
    batch, heads, _, dim = attn.query.shape
    query = attn.query.gather(2, last[:, None, None, None].expand(batch, heads, 1, dim))
    logits = torch.matmul(query, attn.key.transpose(-1, -2)) * attn.scale  # [B, H, 1, N]
    if attn.bias is not None:  # [B, 1, N, N]: the last token's row
        logits = logits + attn.bias.gather(2, last[:, None, None, None].expand(batch, 1, 1, attn.bias.shape[-1]))
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)[:, 0]


class LastQueryAttentionDrop(Reducer):
    """Keep the reducible tokens the last token attends to most."""

    kind = "attention_drop"

    @staticmethod
    def limit(reducible: Count) -> Count:
        return reducible  # dropping (not merging): the whole span may go

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - self.removal(max(tokens_in - self.protected, 0))  # a short prompt: nothing reducible

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        return prune_to_most_important(self, x, state, last_query_attention(attn, state))
