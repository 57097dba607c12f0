"""Multi-head self-attention with an additive key bias, shared by every adapter.

Adapters project q, k, v with the model's own (unchanged) linear layers and call
`attend`; the result also carries what reducers need to choose tokens: the keys
(ToMe's similarity metric) and, on demand, the CLS attention row (DiffRate, EViT,
pruning) or the whole head-averaged attention matrix (Zero-TPrune). Fused attention
kernels return no probabilities, so those are recomputed from q and k when asked for.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionInfo(NamedTuple):
    query: Tensor  # [B, H, N, d]
    key: Tensor  # [B, H, N, d]
    bias: Tensor | None  # [B, 1, 1, N] additive key bias (log size, padding)
    scale: float

    def key_metric(self) -> Tensor:
        """Keys averaged over heads, [B, N, d]: the token-similarity metric of ToMe."""
        return self.key.mean(dim=1)

    def cls_attention(self) -> Tensor:
        """Attention of the CLS query to every token, averaged over heads: [B, N].

        Recomputed for one query row only (cheap), because fused attention kernels
        do not return attention probabilities.
        """
        logits = torch.matmul(self.query[:, :, :1], self.key.transpose(-1, -2)) * self.scale
        if self.bias is not None:
            logits = logits + self.bias
        probs = torch.softmax(logits.float(), dim=-1)
        return probs.mean(dim=1)[:, 0]

    def attention_matrix(self) -> Tensor:
        """Attention probabilities averaged over heads, [B, N, N] float32 (row i: query i over keys).

        Built one head at a time, so memory stays at one [B, N, N] matrix.
        """
        total = None
        for head in range(self.query.shape[1]):
            logits = torch.matmul(self.query[:, head], self.key[:, head].transpose(-1, -2)) * self.scale
            if self.bias is not None:
                logits = logits + self.bias[:, 0]
            probs = torch.softmax(logits.float(), dim=-1)
            total = probs if total is None else total + probs
        return total / self.query.shape[1]


def attend(
    query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float, dropout: float = 0.0
) -> tuple[Tensor, AttentionInfo]:
    """softmax(q k^T * scale + bias) v over heads; returns [B, N, H*d] and the AttentionInfo."""
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=scale)
    batch, heads, tokens, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * dim)
    return out, AttentionInfo(query=query, key=key, bias=bias, scale=scale)


def split_heads(projected: Tensor, head_dim: int) -> Tensor:
    """[B, N, H*d] -> [B, H, N, d]."""
    batch, tokens, _ = projected.shape
    return projected.view(batch, tokens, -1, head_dim).transpose(1, 2)
