"""ToMe: bipartite soft matching (Bolya et al., ICLR 2023).

1. metric = attention keys averaged over heads (`keys`, the paper's choice on ViTs), or the
   hidden states leaving the attention residual (`hidden`, the other feature the paper
   ablates);
2. alternating split A = even tokens, B = odd tokens; scores S = cosine similarity of A
   and B (reducers/matching.py `bipartite_matching`); protected tokens
   (CLS, distillation, registers) never move and never receive (reducers/matching.py);
3. each sample moves r of its own tokens, r = the layer's rate of its reducible tokens,
   at most half of them;
4. every A token picks its best B partner; the r A tokens with the highest scores merge
   into their partners (several may share one), size-weighted;
5. output order [protected, A that stay in index order, all of B], then padding.

With `matching="greedy"` steps 2-5 are replaced by greedy pair matching on the same metric
(reducers/greedy_matching.py): no split, the most similar allowed pair first, order kept.
With `merge="norm_preserving"` a merged token is rescaled to the size-weighted mean of its
tokens' norms (reducers/apply.py `merge`). Greedy matching may rank pairs by a learned merge
cost instead of the similarity (`cost`, a reducers/merge_cost.py LearnedMergeCost, fitted by
calibrate/merge_cost.py): a submodule, so its parameters travel in the checkpoint's weights.

Which metric a model gets by default is the pass's choice (passes/tome.py): keys for
vision, hidden states for BERT-family text, where head-averaged keys are a poor
similarity (measured: benchmarks/results/dynamic_padding.md).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tokcomp.errors import TokcompError
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.greedy_matching import merge_greedy
from tokcomp.reducers.matching import METRICS, bipartite_matching, merge_matched, metric_features, similarity_metric
from tokcomp.reducers.merge_cost import symmetric_similarity
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# How pairs are chosen: ToMe's alternating bipartite split, or greedy over all pairs.
MATCHINGS = ("bipartite", "greedy")
# What a merged token is: the size-weighted mean, or that mean rescaled to the mean norm.
MERGES = ("mean", "norm_preserving")


class ToMe(Reducer):
    kind = "tome"

    def __init__(
        self,
        rate: Rate,
        protected: int,
        metric: str = "keys",
        matching: str = "bipartite",
        merge: str = "mean",
        cost: nn.Module | None = None,
    ):
        super().__init__(rate, protected)
        if metric not in METRICS:
            raise TokcompError(f"unknown ToMe metric {metric!r}", hint=f"valid: {', '.join(METRICS)}")
        if matching not in MATCHINGS:
            raise TokcompError(f"unknown ToMe matching {matching!r}", hint=f"valid: {', '.join(MATCHINGS)}")
        if merge not in MERGES:
            raise TokcompError(f"unknown ToMe merge {merge!r}", hint=f"valid: {', '.join(MERGES)}")
        self.metric = metric
        self.matching = matching
        self.merge = merge
        # cost: learned: (x, state, attn) -> greedy scores [B, N, N] (a LearnedMergeCost); None: the similarity
        self.cost = cost

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        length = self.kept_tokens(tokens)
        removed = self.per_sample_removal(state, tokens)
        preserve_norm = self.merge == "norm_preserving"
        if self.matching == "greedy":
            if self.cost is None:
                scores = symmetric_similarity(similarity_metric(x, attn, self.metric))
            else:
                scores = self.cost(x, state, attn)
            return merge_greedy(x, state, scores, removed, tokens - length, length, preserve_norm)
        matching = bipartite_matching(metric_features(x, attn, self.metric), state)
        return merge_matched(x, state, matching, removed, tokens - length, length, preserve_norm)

    def overhead_macs(self, tokens_in: int) -> int:
        """The learned cost's own MACs (a model the budget must own); similarity matching counts 0, as in the field."""
        return 0 if self.cost is None else self.cost.macs(tokens_in)

    def describe(self) -> dict[str, Any]:
        cost = "similarity" if self.cost is None else "learned"
        return {
            **super().describe(),
            "metric": self.metric,
            "matching": self.matching,
            "merge": self.merge,
            "cost": cost,
        }
