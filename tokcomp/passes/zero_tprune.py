"""Pass `zero_tprune`: Zero-TPrune's attention-graph importance, then similarity pruning."""

from __future__ import annotations

from pydantic import Field

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.rate import Rate
from tokcomp.reducers.zero_tprune import DEFAULT_ITERATIONS, ZeroTPrune


class ZeroTPruneConfig(BudgetConfig):
    iterations: int = Field(
        default=DEFAULT_ITERATIONS, ge=1, description="Weighted PageRank steps over the attention graph"
    )


@register_pass
class ZeroTPrunePass(ScheduledReductionPass):
    name = "zero_tprune"
    version = 1
    Config = ZeroTPruneConfig
    reducer = ZeroTPrune
    summary = "Zero-TPrune: rank by PageRank on the attention graph, prune the less important tokens most like the important ones"

    def make_reducer(self, config: ZeroTPruneConfig, rate: Rate, protected: int, width: int) -> ZeroTPrune:
        return ZeroTPrune(rate, protected, config.iterations)
