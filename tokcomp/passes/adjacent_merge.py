"""Pass `adjacent_merge`: A-ToMe's order-preserving merging of neighbouring tokens (speech encoders).

The budget (`r`, a per-block list, `{r, inflect}` or `target_flops`) is resolved like ToMe's
at the reference input and applied as a rate of each input's own tokens. With `threshold`
every neighbour pair whose keys' cosine exceeds it merges, up to that budget per block (the
cap): the token counts then depend on the audio, and the recorded `tokens_per_layer` /
`gmacs` are the fewest tokens the cap allows (eager PyTorch only: data-dependent shapes).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.adjacent import AdjacentMerge
from tokcomp.reducers.rate import Rate


class AdjacentMergeConfig(BudgetConfig):
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="merge every neighbour pair above this key cosine, up to the budget (default: by the budget alone)",
    )
    proportional_attention: bool = True

    @model_validator(mode="after")
    def _learned_rates_by_ratio(self):
        if self.threshold is not None and self.rates == "learned":
            raise ValueError("rates: learned searches merge ratios; leave out 'threshold' (it merges by similarity)")
        return self


@register_pass
class AdjacentMergePass(ScheduledReductionPass):
    name = "adjacent_merge"
    version = 1
    Config = AdjacentMergeConfig
    reducer = AdjacentMerge
    summary = "A-ToMe: merge neighbouring tokens with similar keys, time order kept (by rate or threshold)"

    def make_reducer(self, config: AdjacentMergeConfig, rate: Rate, protected: int, width: int) -> AdjacentMerge:
        return AdjacentMerge(rate, protected, config.threshold)
