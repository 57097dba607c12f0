"""DiffRate: prune, then merge, to learned per-layer kept counts (Chen et al., ICCV 2023).

Re-implemented from the description in shared/reference/methods.md. In a block with
kept counts P (prune) and M (merge), both counting the protected tokens:
1. importance = CLS attention averaged over heads (AttentionInfo.cls_attention());
2. the non-protected tokens are sorted by importance, descending;
3. prune: keep the protected tokens and the first P - protected sorted tokens;
4. merge: every kept token at sorted position >= M joins its most cosine-similar
   token among positions protected .. M-1 (the hidden state x is the metric;
   protected tokens are never destinations), by a size-weighted average as in ToMe.
   The reference code averages without size weights and scales sizes by the cosine,
   which goes negative for dissimilar pairs; size-weighting keeps sizes positive.
Tokens after the block = min(N, P, M). Output order: [protected, the M - protected most
important tokens by importance]. P and M are plain ints, so shapes are static.

`merge_rule` chooses which of the P kept tokens merge (step 4):
- `importance` (DiffRate's rule, above): the P - M least attended ones, into the M - 1
  most attended;
- `bipartite`: ToMe's matching over the importance-sorted tokens: A = even positions,
  B = odd positions; the P - M A tokens with the most similar B token merge into it
  (hidden-state cosine, size-weighted, protected tokens never move or receive). At most
  the unprotected A tokens can merge, so tokens after the block are at least
  P - bipartite_sources(P) (`kept_tokens` applies that floor; the search respects it).

Padding (text): padding tokens rank below every real token, so a real token is never
pruned while padding survives, and a real token only merges into real tokens (all
destinations precede every source in the ranking); padding that merges carries no
weight (reducers/ops.py weighted_merge), so it never changes a real token.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.errors import TokcompError
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ops import select_tokens, weighted_merge
from tokcomp.reducers.transform import ExclusiveMerge, plan_alternating
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# Importance given to padding: below any attention probability, so padding ranks last.
PADDING_IMPORTANCE = -1.0
MERGE_RULES = ("importance", "bipartite")


def bipartite_sources(tokens: int, protected: int) -> int:
    """How many of `tokens` sorted tokens can merge under the bipartite rule: even positions >= protected."""
    return (tokens + 1) // 2 - (protected + 1) // 2


def block_counts(tokens_in: int, prune_kept: int, merge_kept: int, protected: int, merge_rule: str) -> tuple[int, int]:
    """(tokens after pruning, tokens after merging) of a block that `tokens_in` tokens enter.

    Counts never grow, and the bipartite rule keeps at least P - bipartite_sources(P).
    """
    pruned = min(tokens_in, prune_kept)
    merged = min(pruned, merge_kept)
    if merge_rule == "bipartite":
        merged = max(merged, pruned - bipartite_sources(pruned, protected))
    return pruned, merged


def importance_order(importance: Tensor, protected: int, mask: Tensor | None) -> Tensor:
    """Token indices [B, N]: protected tokens first, then the rest by importance, descending.

    `importance` [B, N] is the CLS attention row; `mask` [B, N] flags real tokens.
    """
    rest = importance[:, protected:]
    if mask is not None:
        rest = torch.where(mask[:, protected:] > 0, rest, torch.full_like(rest, PADDING_IMPORTANCE))
    order = rest.argsort(dim=-1, descending=True, stable=True) + protected
    head = torch.arange(protected, device=importance.device).expand(importance.shape[0], -1)
    return torch.cat([head, order], dim=1)


def tail_merge_sum(t: Tensor, keep: int, dst: Tensor) -> Tensor:
    """Sum the tail rows t[:, keep:] into rows `dst` [B, N - keep] of the head t[:, :keep]."""
    head, tail = t[:, :keep], t[:, keep:]
    return head.scatter_add(1, dst[..., None].expand(-1, -1, t.shape[-1]), tail)


def best_destinations(x: Tensor, keep: int, protected: int) -> Tensor:
    """For every token at position >= keep, its most cosine-similar token in [protected, keep)."""
    metric = F.normalize(x, dim=-1)
    scores = metric[:, keep:] @ metric[:, protected:keep].transpose(-1, -2)
    return scores.argmax(dim=-1) + protected


class DiffRate(Reducer):
    kind = "diffrate"

    def __init__(self, prune_kept: int, merge_kept: int, protected: int = 1, merge_rule: str = "importance"):
        super().__init__(protected)
        for name, value in (("prune_kept", prune_kept), ("merge_kept", merge_kept)):
            if value <= protected:
                raise ValueError(f"{name} must keep more than the {protected} protected token(s), got {value}")
        if merge_rule not in MERGE_RULES:
            raise TokcompError(f"unknown merge_rule {merge_rule!r}", hint=f"valid: {', '.join(MERGE_RULES)}")
        self.prune_kept = prune_kept
        self.merge_kept = merge_kept
        self.merge_rule = merge_rule

    def _counts(self, tokens_in: int) -> tuple[int, int]:
        """(tokens after pruning, tokens after merging) for `tokens_in` tokens entering the block."""
        return block_counts(tokens_in, self.prune_kept, self.merge_kept, self.protected, self.merge_rule)

    def kept_tokens(self, tokens_in: int) -> int:
        return self._counts(tokens_in)[1]

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        pruned, merged = self._counts(tokens)
        if merged == tokens:
            return x, state
        order = importance_order(attn.cls_attention(), self.protected, state.mask)
        x, state = select_tokens(x, state, order[:, :pruned])  # sorts and prunes in one gather
        if merged == pruned:
            return x, state
        if self.merge_rule == "bipartite":
            plan = plan_alternating(F.normalize(x, dim=-1), pruned - merged, self.protected, state.mask)
            return ExclusiveMerge.apply_plan(x, state, plan)
        dst = best_destinations(x, merged, self.protected)
        return weighted_merge(x, state, partial(tail_merge_sum, keep=merged, dst=dst))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "prune_kept": self.prune_kept,
            "merge_kept": self.merge_kept,
            "merge_rule": self.merge_rule,
        }
