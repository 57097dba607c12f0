"""Pass `token_transform`: Token Transforming's many-to-many merging in every selected block."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokcomp.passes.base import register_pass
from tokcomp.passes.budget import BudgetConfig
from tokcomp.passes.token_reduction import ScheduledReductionPass
from tokcomp.reducers.rate import Rate
from tokcomp.reducers.transform import (
    DEFAULT_K,
    DEFAULT_METRIC,
    DEFAULT_SELECTION,
    DEFAULT_TEMPERATURE,
    TokenTransform,
)


class TokenTransformConfig(BudgetConfig):
    k: int = Field(
        default=DEFAULT_K, ge=1, description="targets each removed token is spread over (1 = exclusive merging)"
    )
    temperature: float = Field(default=DEFAULT_TEMPERATURE, gt=0, description="softmax temperature over cosine scores")
    target_selection: Literal["alternating", "cls_attention"] = Field(
        default=DEFAULT_SELECTION,
        description="alternating: ToMe's A/B split; cls_attention: keep the most attended tokens as targets",
    )
    metric: Literal["hidden", "keys"] = Field(
        default=DEFAULT_METRIC, description="cosine similarity of hidden states or of attention keys (ToMe's)"
    )
    proportional_attention: bool = True


@register_pass
class TokenTransformPass(ScheduledReductionPass):
    name = "token_transform"
    version = 1
    Config = TokenTransformConfig
    reducer = TokenTransform
    summary = "Token Transforming: spread r tokens per block over their top-k most similar tokens"

    def make_reducer(self, config: TokenTransformConfig, rate: Rate, protected: int, width: int) -> TokenTransform:
        return TokenTransform(rate, protected, config.k, config.temperature, config.target_selection, config.metric)
