"""Pass `tome`: ToMe bipartite soft matching in every selected block."""

from __future__ import annotations

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.tome import ToMe


class ToMeConfig(BudgetConfig):
    proportional_attention: bool = True


@register_pass
class ToMePass(ScheduledReductionPass):
    name = "tome"
    version = 1
    Config = ToMeConfig
    reducer = ToMe
    summary = "ToMe bipartite soft matching: merge r tokens per block"
