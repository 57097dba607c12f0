"""Pass `tome`: ToMe bipartite soft matching in every selected block.

The similarity metric defaults per model family (`metric` left unset): attention keys
averaged over heads (the paper's choice on ViTs) for vision models, hidden states (the other
feature the paper ablates) for BERT-family text encoders. On MiniLM-L6 at -35% FLOPs, keys give
0.8806 / 0.8946 / 0.9292 size-weighted mean-pooled cosine on held-out 8-16 / 17-32 / 33-64-token
sentences, hidden states 0.9290 / 0.9549 / 0.9669 (benchmarks/results/dynamic_padding.md).
The choice is recorded in the pass metadata, so a checkpoint rebuilds what was compiled;
records without it (version 1) were compiled with keys.

`matching: greedy` replaces ToMe's alternating bipartite split by greedy matching over all
pairs (reducers/greedy_matching.py): 0.9343 / 0.9564 / 0.9730 on the same sentences
(dynamic_padding.md); `merge: norm_preserving` rescales each merged token to its tokens'
size-weighted mean norm. Records before version 3 were compiled with the bipartite split and
the plain mean.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.rate import Rate
from tokcomp.reducers.tome import ToMe
from tokcomp.surgery import find_adapter

# Families whose default metric is the hidden state; every other family uses the keys.
HIDDEN_METRIC_FAMILIES = ("bert",)
# What a record without a recorded metric (pass version 1) was compiled with.
VERSION_1_METRIC = "keys"


class ToMeConfig(BudgetConfig):
    proportional_attention: bool = True
    metric: Literal["keys", "hidden"] | None = Field(
        default=None,
        description="similarity of attention keys (ToMe's, vision default) or of hidden states (BERT-family default)",
    )
    matching: Literal["bipartite", "greedy"] = Field(
        default="bipartite",
        description="ToMe's alternating bipartite split, or greedy over all pairs, most similar first (order kept)",
    )
    merge: Literal["mean", "norm_preserving"] = Field(
        default="mean",
        description="a merged token is the size-weighted mean (ToMe's), or that mean rescaled to its tokens' mean norm",
    )


def default_metric(family: str) -> str:
    return "hidden" if family in HIDDEN_METRIC_FAMILIES else "keys"


@register_pass
class ToMePass(ScheduledReductionPass):
    name = "tome"
    version = 3  # 2: the metric is recorded (and defaults per family); 3: matching and merge options
    Config = ToMeConfig
    reducer = ToMe
    summary = "ToMe bipartite soft matching: merge r tokens per block"

    def make_reducer(self, config: ToMeConfig, rate: Rate, protected: int) -> ToMe:
        return ToMe(rate, protected, metric=config.metric, matching=config.matching, merge=config.merge)

    def apply(self, model, config: ToMeConfig, ctx) -> dict[str, Any]:
        metric = config.metric or default_metric(find_adapter(model).family)
        metadata = super().apply(model, config.model_copy(update={"metric": metric}), ctx)
        return {**metadata, "metric": metric}

    def restore(self, model, config: ToMeConfig, metadata: dict[str, Any]) -> None:
        metric = metadata.get("metric", VERSION_1_METRIC)
        super().restore(model, config.model_copy(update={"metric": metric}), metadata)
