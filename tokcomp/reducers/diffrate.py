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

`merge_rule` chooses which of the kept tokens merge, and how (step 4):
- `importance` (DiffRate's rule, above): the least attended ones, into the most attended;
- `bipartite`: ToMe's matching over the importance-sorted tokens (reducers/matching.py)
  on the hidden states. At most the unprotected A tokens can merge, so a block keeps at
  least P - bipartite_sources(P) tokens (`limit`; the search respects it);
- `bipartite_keys`: the same matching on the attention keys (ToMe's metric);
- `spread`: the same tokens move as with `bipartite`, each spread over its SPREAD_K most
  similar B tokens (Token Transforming's many-to-many merge, reducers/transform.py).
The last three share the bipartite floor, so one set of counts suits all of them: the
per-block choice among them (calibrate/merge_choice.py) never changes a count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.errors import TokcompError
from tokcomp.reducers.apply import first, select, with_null
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.matching import bipartite_matching, merge_into_most_similar, merge_matched
from tokcomp.reducers.ops import gather_tokens_reference as gather_rows  # metrics: not a swappable step
from tokcomp.reducers.ranking import keep_most_important
from tokcomp.reducers.rate import Count, Rate, at_most
from tokcomp.reducers.transform import DEFAULT_TEMPERATURE, spread_matched
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count, reducible_tokens

MERGE_RULES = ("importance", "bipartite", "bipartite_keys", "spread")
# The rules a count search reproduces in place (calibrate/soft_reducer.py); the others reuse bipartite counts.
COUNT_RULES = ("importance", "bipartite")
SPREAD_K = 2  # targets each moving token is spread over with merge_rule `spread`
SPREAD_TEMPERATURE = DEFAULT_TEMPERATURE  # Token Transforming's softmax temperature


def has_bipartite_floor(merge_rule: str) -> bool:
    """Whether the rule merges only A tokens of an alternating split (every rule but DiffRate's own)."""
    return merge_rule != "importance"


def bipartite_sources(tokens: Count, protected: int) -> Count:
    """How many of `tokens` sorted tokens can merge under the bipartite rule: even positions >= protected."""
    return (tokens + 1) // 2 - (protected + 1) // 2


def block_counts(tokens_in: int, prune_kept: int, merge_kept: int, protected: int, merge_rule: str) -> tuple[int, int]:
    """(tokens after pruning, tokens after merging) at the reference input, from kept counts.

    Counts never grow, and the bipartite rule keeps at least P - bipartite_sources(P).
    """
    pruned = min(tokens_in, prune_kept)
    merged = min(pruned, merge_kept)
    if has_bipartite_floor(merge_rule):
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


def diffrate_reducers(
    prune_kept: list[int],
    merge_kept: list[int],
    protected: int,
    input_tokens: int,
    count_rule: str,
    rules: list[str] | None = None,
) -> list[DiffRate | None]:
    """A DiffRate reducer per block (None where it keeps every token).

    Counts become rates under `count_rule`'s floor (the rule they were searched with); `rules`
    gives each block's merge rule (default: `count_rule` everywhere).
    """
    rates = rates_from_kept(prune_kept, merge_kept, input_tokens, protected, count_rule)
    rules = [count_rule] * len(rates) if rules is None else rules
    if len(rules) != len(rates):
        raise TokcompError(f"{len(rules)} merge rules for {len(rates)} blocks", hint="give one rule per block")
    return [
        DiffRate(prune, merge, protected, rule) if prune.removed or merge.removed else None
        for (prune, merge), rule in zip(rates, rules, strict=True)
    ]


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
        if has_bipartite_floor(self.merge_rule):
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
        if self.merge_rule == "bipartite_keys":  # the keys of the kept tokens, in their new order
            keys = attn.key_metric()
            keys = gather_rows(with_null(keys) if null else keys, kept)
        x, state = select(x, state, kept, null=null)
        merged = self._merged(pruned - self.protected)
        slots = pruned_length - length
        if has_bipartite_floor(self.merge_rule):
            matching = bipartite_matching(keys if self.merge_rule == "bipartite_keys" else x, state)
            if self.merge_rule == "spread":
                return spread_matched(x, state, matching, merged, slots, length, SPREAD_K, SPREAD_TEMPERATURE)
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
