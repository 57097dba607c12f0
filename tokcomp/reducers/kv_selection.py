"""KV-cache selection after prefill (SnapKV, StreamingLLM): which prompt tokens each KV head stores.

Prefill runs over every token unchanged; a selector only decides what a full-attention
layer's cache keeps for the decoding steps. Each sample keeps its protected tokens (sinks,
question) and the share of its own reducible tokens its `Rate` leaves (reducers/rate.py),
ranked with the shared `keep_most_important` (protected first, padding last). The result
is token indices [B, Hs, L] in input order, N marking an empty slot (a sample of a padded
batch that keeps fewer): Hs = 1 when every KV head keeps the same tokens, the KV heads
when each head chooses its own (SnapKV).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tokcomp.reducers.ranking import pool_neighbours
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.state import TokenState, causal_bias, real_count, reducible_tokens


def kept_per_row(importance: Tensor, state: TokenState, rate: Rate) -> Tensor:
    """Indices [B, Hs, L] of each row's most important tokens (importance [B, Hs, N]) in input order, N = empty."""
    from tokcomp.reducers.ranking import keep_most_important  # reducers import surgery: import late

    batch, heads, tokens = importance.shape
    keep = real_count(state, tokens) - rate.of(reducible_tokens(state, 0, tokens))
    keep = torch.as_tensor(keep, device=importance.device).expand(batch)
    rows = TokenState(*(field.repeat_interleave(heads, dim=0) for field in state[:4]))
    kept, _ = keep_most_important(
        importance.reshape(batch * heads, tokens), rows, keep.repeat_interleave(heads), int(keep.max()), True
    )
    return kept.view(batch, heads, -1)


class KVSelector(nn.Module):
    """Chooses the prompt tokens a full-attention layer's KV cache keeps."""

    kind = ""

    def __init__(self, rate: Rate):
        super().__init__()
        self.rate = rate

    def forward(self, query: Tensor, key: Tensor, state: TokenState, scale: float) -> Tensor:
        """query [B, H, N, d], key [B, Hkv, N, d] (rotated), the tokens' state -> indices [B, Hs, L]."""
        return kept_per_row(self.importance(query, key, state, scale), state, self.rate)

    def importance(self, query: Tensor, key: Tensor, state: TokenState, scale: float) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate.to_json()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "kind")


class RecentSelection(KVSelector):
    """StreamingLLM: the sinks and the most recent tokens (one choice for every KV head)."""

    kind = "recent"

    def importance(self, query: Tensor, key: Tensor, state: TokenState, scale: float) -> Tensor:
        return state.position[:, None].float()


class ObservationWindowSelection(KVSelector):
    """SnapKV: per KV head, the tokens the last `window` prompt tokens attend to most, pooled over neighbours.

    Scores are the attention probabilities of the window's queries (causal mask from original
    positions), summed over the window and averaged over the query heads of each KV head's
    group, then smoothed by a 1-D max or average pooling of width `kernel` so a kept token
    brings its neighbours. The window itself must be protected (the pass protects at least
    the last `window` tokens), so it is always kept.
    """

    kind = "observation_window"

    def __init__(self, rate: Rate, window: int, kernel: int, pooling: str):
        super().__init__(rate)
        self.window, self.kernel, self.pooling = window, kernel, pooling

    def importance(self, query: Tensor, key: Tensor, state: TokenState, scale: float) -> Tensor:
        batch, heads, tokens, dim = query.shape
        kv_heads = key.shape[1]
        # The window's queries: each sample's last `window` real tokens (fewer in a shorter prompt).
        latest = torch.where(state.real, state.position, -1)
        window = min(self.window, tokens)
        rank, index = latest.topk(window, dim=-1)  # [B, w]
        present = rank >= 0
        q = query.gather(2, index[:, None, :, None].expand(batch, heads, window, dim))
        k = key.repeat_interleave(heads // kv_heads, dim=1)
        logits = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, w, N]
        key_bias = torch.where(state.real, 0.0, torch.finfo(logits.dtype).min).to(logits.dtype)
        logits = logits + causal_bias(state.position.gather(1, index), state.position, key_bias, logits.dtype)
        probs = torch.softmax(logits.float(), dim=-1) * present[:, None, :, None]
        scores = probs.sum(dim=2).view(batch, kv_heads, heads // kv_heads, tokens).mean(dim=2)  # [B, Hkv, N]
        return pool_neighbours(scores, self.kernel, self.pooling)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "window": self.window, "kernel": self.kernel, "pooling": self.pooling}
