"""Pass `evit`: keep the most attended tokens and fuse the rest into one token per block."""

from __future__ import annotations

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.evit import EViT


class EViTConfig(BudgetConfig):
    proportional_attention: bool = True


@register_pass
class EViTPass(ScheduledReductionPass):
    name = "evit"
    version = 1
    Config = EViTConfig
    reducer = EViT
    summary = "EViT: keep the most attended tokens, fuse the r + 1 others into one (removes r per block)"
