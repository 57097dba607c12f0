"""Pass `token_transform`: Token Transforming's many-to-many merging in every selected block.

Also home of `ScheduledReductionPass`, the apply/restore shared by the reducer family
(`token_transform`, `prune`, `evit`): a per-block r from the shared budget
(passes/budget.py), one reducer per block, and a record that rebuilds from
(config, metadata) alone.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

from pydantic import Field

from tokcomp.passes.base import Pass, register_pass, select_blocks
from tokcomp.passes.budget import BudgetConfig, resolve_r_list
from tokcomp.passes.token_reduction import BlockSite, geometry_of, token_metadata
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.transform import (
    DEFAULT_K,
    DEFAULT_METRIC,
    DEFAULT_SELECTION,
    DEFAULT_TEMPERATURE,
    TokenTransform,
)


class ScheduledReductionPass(Pass):
    """A token pass whose reducers are fully described by the config and r per block."""

    @abstractmethod
    def make_reducer(self, config: BudgetConfig, r: int, protected: int) -> Reducer: ...

    def proportional_attention(self, config: BudgetConfig) -> bool:
        return bool(getattr(config, "proportional_attention", False))

    def apply(self, model, config: BudgetConfig, ctx) -> dict[str, Any]:
        site = BlockSite.prepare(model, self.name)
        geometry = geometry_of(model, ctx.input_spec)

        def make(r_list: list[int]) -> list[Reducer | None]:
            return self._reducers(config, r_list, site.protected)

        r_list = resolve_r_list(config, select_blocks(site.names, config), geometry, make)
        reducers = make(r_list)
        site.install(reducers, self.proportional_attention(config))
        return {**token_metadata(site, geometry, reducers), "r_per_layer": r_list}

    def restore(self, model, config: BudgetConfig, metadata: dict[str, Any]) -> None:
        site = BlockSite.prepare(model, self.name)
        reducers = self._reducers(config, metadata["r_per_layer"], metadata["protected"])
        site.install(reducers, self.proportional_attention(config))

    def _reducers(self, config: BudgetConfig, r_list: list[int], protected: int) -> list[Reducer | None]:
        return [self.make_reducer(config, r, protected) if r > 0 else None for r in r_list]


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
    summary = "Token Transforming: spread r tokens per block over their top-k most similar tokens"

    def make_reducer(self, config: TokenTransformConfig, r: int, protected: int) -> Reducer:
        return TokenTransform(
            r, config.k, config.temperature, config.target_selection, config.metric, protected=protected
        )
