"""DiffRate: prune, then merge, at learned per-layer rates (Chen et al., ICCV 2023).

Re-implemented from the paper's description. A block with kept counts P (prune) and M
(merge), both counting the protected tokens, at the reference input:
1. importance = CLS attention averaged over heads (AttentionInfo.cls_attention());
2. tokens are sorted by importance, descending (protected first, padding last);
3. prune: keep the first P;
4. merge: every kept token at sorted position >= M joins its most cosine-similar token
   among positions < M (the hidden state x is the metric; protected tokens are never
   destinations), by a size-weighted average as in ToMe. The paper's code averages
   without size weights and scales sizes by the cosine, which goes negative for
   dissimilar pairs; size-weighting keeps sizes positive.
Tokens after the block = min(N, P, M). Output order: [protected, the most important
tokens by importance]. The counts are stored as rates (reducers/rate.py): prune removes
its share of the reducible tokens entering the block, merge its share of those left, so
every input size and every sample of a padded batch is reduced by its own length.

`merge_rule` chooses which of the kept tokens merge (step 4):
- `importance` (DiffRate's rule, above): the least attended ones, into the most attended;
- `bipartite`: ToMe's matching over the importance-sorted tokens (reducers/matching.py)
  on the hidden states. At most the unprotected A tokens can merge, so a block keeps at
  least P - bipartite_sources(P) tokens (`limit`; the search respects it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.errors import TokcompError
from tokcomp.reducers.apply import first, select
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.matching import bipartite_matching, merge_into_most_similar, merge_matched
from tokcomp.reducers.ranking import keep_most_important
from tokcomp.reducers.rate import Count, Rate, at_most
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count, reducible_tokens

MERGE_RULES = ("importance", "bipartite")


def bipartite_sources(tokens: Count, protected: int) -> Count:
    """How many of `tokens` sorted tokens can merge under the bipartite rule: even positions >= protected."""
    return (tokens + 1) // 2 - (protected + 1) // 2


def block_counts(tokens_in: int, prune_kept: int, merge_kept: int, protected: int, merge_rule: str) -> tuple[int, int]:
    """(tokens after pruning, tokens after merging) at the reference input, from kept counts.

    Counts never grow, and the bipartite rule keeps at least P - bipartite_sources(P).
    """
    pruned = min(tokens_in, prune_kept)
    merged = min(pruned, merge_kept)
    if merge_rule == "bipartite":
        merged = max(merged, pruned - bipartite_sources(pruned, protected))
    return pruned, merged


def rates_from_kept(
    prune_kept: list[int], merge_kept: list[int], input_tokens: int, protected: int, merge_rule: str
) -> list[tuple[Rate, Rate]]:
    """(prune rate, merge rate) of every block from kept counts at the reference input."""
    rates, tokens = [], input_tokens
    for p, m in zip(prune_kept, merge_kept, strict=True):
        pruned, merged = block_counts(tokens, p, m, protected, merge_rule)
        rates.append((Rate(tokens - pruned, tokens - protected), Rate(pruned - merged, max(pruned - protected, 1))))
        tokens = merged
    return rates


class DiffRate(Reducer):
    kind = "diffrate"
    uses_cls_attention = True

    def __init__(self, prune: Rate, merge: Rate, protected: int, merge_rule: str = "importance"):
        super().__init__(prune, protected)
        if merge_rule not in MERGE_RULES:
            raise TokcompError(f"unknown merge_rule {merge_rule!r}", hint=f"valid: {', '.join(MERGE_RULES)}")
        self.merge_rate = merge
        self.merge_rule = merge_rule

    def _pruned(self, reducible: Count) -> Count:
        """Tokens pruning removes of `reducible`: at least one reducible token stays."""
        return at_most(self.rate.of(reducible), reducible - 1)

    def _merged(self, reducible: Count) -> Count:
        """Tokens merging removes of `reducible` tokens left after pruning (the bipartite floor applies)."""
        if self.merge_rule == "bipartite":
            limit = bipartite_sources(reducible + self.protected, self.protected)
        else:
            limit = reducible - 1
        return at_most(self.merge_rate.of(reducible), limit)

    def kept_tokens(self, tokens_in: int) -> int:
        pruned = tokens_in - self._pruned(tokens_in - self.protected)
        return pruned - self._merged(pruned - self.protected)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens, null = x.shape[1], state.real is not None
        pruned_length = tokens - self._pruned(tokens - self.protected)
        length = self.kept_tokens(tokens)
        pruned = real_count(state, tokens) - self._pruned(reducible_tokens(state, self.protected, tokens))
        # Sort by importance and prune in one gather.
        kept, _ = keep_most_important(attn.cls_attention(), state, pruned, pruned_length, by_position=False)
        x, state = select(x, state, kept, null=null)
        merged = self._merged(pruned - self.protected)
        slots = pruned_length - length
        if self.merge_rule == "bipartite":
            matching = bipartite_matching(F.normalize(x, dim=-1), state)
            return merge_matched(x, state, matching, merged, slots, length)
        # Importance rule: sorted positions [M, P) merge into the most similar of [0, M).
        stays = pruned - merged
        position = torch.arange(pruned_length, device=x.device).expand(x.shape[0], -1)
        kept = first(position, stays, length, pruned_length)
        slot = torch.arange(slots, device=x.device)
        moving = (slot < (merged[:, None] if isinstance(merged, Tensor) else merged)).expand(x.shape[0], slots)
        start = stays[:, None] if isinstance(stays, Tensor) else stays
        moved = torch.where(moving, start + slot, torch.full_like(moving, pruned_length, dtype=torch.int64))
        return merge_into_most_similar(x, state, F.normalize(x, dim=-1), kept, moved, moving, null=null)

    def describe(self) -> dict:
        return {**super().describe(), "merge_rate": self.merge_rate.to_json(), "merge_rule": self.merge_rule}
