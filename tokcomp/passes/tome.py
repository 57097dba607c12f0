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

`cost: learned` (greedy matching only) ranks pairs by a merge cost fitted per block on the
recipe's calibration data (calibrate/merge_cost.py, reducers/merge_cost.py); the record keeps
its shape, the checkpoint's weights its parameters. Records before version 4 rank by similarity.
A `target_flops` budget counts the cost model's own MACs (Reducer.overhead_macs), so at the same
target it may remove more tokens than ranking by similarity; at the default width (hidden: 8) it
is 0.7% of a MiniLM block and the -35% budget keeps ToMe's r = 14 (at hidden: 32, r = 15).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tokcomp.passes.base import StrictModel, register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.merge_cost import LearnedMergeCost
from tokcomp.reducers.rate import Rate
from tokcomp.reducers.tome import ToMe
from tokcomp.surgery import find_adapter, token_blocks

# Families whose default metric is the hidden state; every other family uses the keys.
HIDDEN_METRIC_FAMILIES = ("bert",)
# What a record without a recorded metric (pass version 1) was compiled with.
VERSION_1_METRIC = "keys"


class MergeCostSettings(StrictModel):
    """Settings of `cost: learned` (calibrate/merge_cost.py)."""

    candidates: int = Field(2, ge=1, description="partners per token the cost is evaluated on: its most similar")
    hidden: int = Field(
        0,
        ge=0,
        description="width of a pair MLP on [h_i * h_j, |h_i - h_j|]; 0: none, the cost is linear in its terms "
        "(the default: it scored higher on a validation split than hidden: 8, and costs no per-pair pass)",
    )
    max_tokens: int = Field(
        32, ge=4, description="calibration samples longer than this are skipped (measuring grows with the cube)"
    )
    steps: int = Field(700, ge=1, description="optimizer steps of each block's fit")
    batch_pairs: int = Field(4096, ge=1, description="measured pairs each optimizer step draws")


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
    cost: Literal["similarity", "learned"] = Field(
        default="similarity",
        description="greedy matching ranks pairs by similarity, or by a merge cost fitted on the calibration data",
    )
    cost_model: MergeCostSettings | None = Field(default=None, description="settings of cost: learned")

    @model_validator(mode="after")
    def _learned_cost_is_greedy(self):
        if self.cost == "learned" and self.matching != "greedy":
            raise ValueError("cost: learned ranks the pairs of greedy matching; add matching: greedy")
        if self.cost_model is not None and self.cost != "learned":
            raise ValueError("'cost_model' settings apply to cost: learned only")
        return self

    @property
    def cost_settings(self) -> MergeCostSettings:
        return self.cost_model or MergeCostSettings()


def default_metric(family: str) -> str:
    return "hidden" if family in HIDDEN_METRIC_FAMILIES else "keys"


@register_pass
class ToMePass(ScheduledReductionPass):
    name = "tome"
    version = 4  # 2: the metric is recorded (and defaults per family); 3: matching and merge options; 4: cost
    Config = ToMeConfig
    reducer = ToMe
    summary = "ToMe bipartite soft matching: merge r tokens per block"

    def make_reducer(self, config: ToMeConfig, rate: Rate, protected: int, width: int) -> ToMe:
        # cost: learned starts from an empty cost model of the recorded shape: the budget counts its MACs, and
        # fitting (apply) or the checkpoint's weights (restore) fill it
        cost = None
        if config.cost == "learned":
            cost = LearnedMergeCost(width, config.cost_settings.hidden, config.cost_settings.candidates)
        return ToMe(rate, protected, metric=config.metric, matching=config.matching, merge=config.merge, cost=cost)

    def apply(self, model, config: ToMeConfig, ctx) -> dict[str, Any]:
        metric = config.metric or default_metric(find_adapter(model).family)
        metadata = {**super().apply(model, config.model_copy(update={"metric": metric}), ctx), "metric": metric}
        if config.cost != "learned":
            return metadata
        from tokcomp.calibrate.merge_cost import learn_merge_costs

        blocks = token_blocks(model)
        preserve_norm = config.merge == "norm_preserving"
        settings = config.cost_settings
        models, report = learn_merge_costs(
            model, blocks, settings, preserve_norm, metadata["input_tokens"], ctx, self.name
        )
        for index, cost in models.items():
            blocks[index].reducer.cost = cost
        shape = {"hidden": settings.hidden, "candidates": settings.candidates}
        return {**metadata, "merge_cost": shape, "report": {**metadata.get("report", {}), "merge_cost": report}}

    def restore(self, model, config: ToMeConfig, metadata: dict[str, Any]) -> None:
        metric = metadata.get("metric", VERSION_1_METRIC)
        update = {"metric": metric}
        if config.cost == "learned":  # the recorded shape (the checkpoint's weights fill the models)
            update["cost_model"] = config.cost_settings.model_copy(update=metadata["merge_cost"])
        super().restore(model, config.model_copy(update=update), metadata)
        for block in token_blocks(model):
            if block.reducer is not None and block.reducer.cost is not None:
                block.reducer.cost.to(next(block.parameters()).dtype)
