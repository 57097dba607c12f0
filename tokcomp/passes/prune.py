"""Pass `prune`: drop the r tokens per block that the CLS token attends to least."""

from __future__ import annotations

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.prune import ClassAttentionPrune


class PruneConfig(BudgetConfig):
    """Pruning keeps sizes at 1, so proportional attention would change nothing."""


@register_pass
class PrunePass(ScheduledReductionPass):
    name = "prune"
    version = 1
    Config = PruneConfig
    reducer = ClassAttentionPrune
    summary = "class-attention pruning: drop the r least attended tokens per block"
