"""What every token-reduction pass shares: rewriting blocks, installing reducers, metadata.

`ScheduledReductionPass` is the apply/restore of every pass whose reducers are fully
described by their config and the tokens each block removes at the reference input
(`tome`, `token_transform`, `prune`, `evit`, `zero_tprune`, `adjacent_merge`): the budget
is resolved at the reference input (passes/budget.py; `rates: learned` searches it,
calibrate/learned_rates.py), recorded as `r_per_layer` with the reference `input_tokens`,
and turned into per-block rates (reducers/rate.py) by apply and by restore alike, so a
checkpoint rebuilds exactly what was compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from tokcomp.analysis.flops import model_macs
from tokcomp.errors import RecipeError
from tokcomp.passes.base import Pass, select_blocks
from tokcomp.passes.budget import BudgetConfig, resolve_r_list
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.rate import Rate, rates_from_removals
from tokcomp.reducers.schedule import tokens_after_layers
from tokcomp.surgery import find_adapter, rewrite_blocks
from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.block import TokenBlock


@dataclass
class BlockSite:
    """A model prepared for token reduction: its adapter, rewritten blocks and their names."""

    adapter: Adapter
    blocks: list[TokenBlock]
    names: list[str]
    protected: int  # leading tokens no reducer may remove

    @classmethod
    def prepare(cls, model: nn.Module, pass_name: str) -> BlockSite:
        adapter = find_adapter(model)
        container, _ = adapter.block_list(model)
        blocks = rewrite_blocks(model, adapter)
        if any(block.reducer is not None for block in blocks):
            raise RecipeError(
                f"pass '{pass_name}' found token reduction already installed by an earlier pass",
                hint="use one token-reduction pass per recipe",
            )
        names = [f"{container}.{i}" for i in range(len(blocks))]
        return cls(adapter, blocks, names, adapter.protected_tokens(model))

    def require_cls(self, pass_name: str) -> None:
        """Refuse a pass that ranks tokens by the CLS token's attention on a model without one."""
        if self.protected == 0:
            raise RecipeError(
                f"pass '{pass_name}' ranks tokens by the CLS token's attention, and this {self.adapter.family} "
                "model has no CLS token",
                hint="use adjacent_merge, tome, token_transform (target_selection: alternating) or zero_tprune",
            )

    def install(self, reducers: list[Reducer | None], proportional_attention: bool) -> None:
        for block, reducer in zip(self.blocks, reducers, strict=True):
            block.reducer = reducer
            block.proportional_attention = proportional_attention
        # Padding moves behind each sample's real tokens before the first reduction (state invariant).
        self.blocks[0].compact_padding = any(reducer is not None for reducer in reducers)


def geometry_of(model: nn.Module, spec: InputSpec) -> Geometry:
    adapter = find_adapter(model)
    adapter.check_input(model, spec)
    return adapter.geometry(model, spec)


def token_metadata(site: BlockSite, geometry: Geometry, reducers: list[Reducer | None]) -> dict[str, Any]:
    """Metadata every token pass records: family, protected tokens, and counts at the reference input."""
    tokens = tokens_after_layers(geometry.input_tokens, reducers)
    return {
        "family": site.adapter.family,
        "protected": site.protected,
        "input_tokens": geometry.input_tokens,
        "tokens_per_layer": tokens,
        "gmacs": model_macs(geometry, tokens, reducers) / 1e9,
    }


class ScheduledReductionPass(Pass):
    """A token pass whose reducers are fully described by the config and r per block."""

    Config: ClassVar[type[BudgetConfig]] = BudgetConfig
    reducer: ClassVar[type[Reducer]]

    def make_reducer(self, config: BudgetConfig, rate: Rate, protected: int, width: int) -> Reducer:
        """One block's reducer; `width` is the model's hidden size (for reducers that hold a model of it)."""
        return self.reducer(rate, protected)

    def proportional_attention(self, config: BudgetConfig) -> bool:
        return bool(getattr(config, "proportional_attention", False))

    def apply(self, model, config: BudgetConfig, ctx) -> dict[str, Any]:
        site = BlockSite.prepare(model, self.name)
        geometry = geometry_of(model, ctx.input_spec)

        def make(r_list: list[int]) -> list[Reducer | None]:
            return self._reducers(config, r_list, geometry.input_tokens, site.protected, geometry.hidden_size)

        selected = select_blocks(site.names, config)
        r_list = resolve_r_list(config, selected, geometry, make, self.name, site.protected)
        reducers = make(r_list)
        if any(reducer is not None and reducer.uses_cls_attention for reducer in reducers):
            site.require_cls(self.name)
        search_report = None
        if config.rates == "learned":
            from tokcomp.calibrate.learned_rates import learn_removals

            def install(candidate) -> None:
                site.install(list(candidate), self.proportional_attention(config))

            r_list, search_report = learn_removals(
                model, config, selected, geometry, site.protected, make, install, r_list, ctx, self.name
            )
            reducers = make(r_list)
        site.install(reducers, self.proportional_attention(config))
        metadata = {**token_metadata(site, geometry, reducers), "r_per_layer": r_list}
        return metadata if search_report is None else {**metadata, "report": search_report}

    def restore(self, model, config: BudgetConfig, metadata: dict[str, Any]) -> None:
        site = BlockSite.prepare(model, self.name)
        r_list, width = metadata["r_per_layer"], site.blocks[0].hidden_size
        reducers = self._reducers(config, r_list, metadata["input_tokens"], metadata["protected"], width)
        site.install(reducers, self.proportional_attention(config))

    def _reducers(
        self, config: BudgetConfig, r_list: list[int], input_tokens: int, protected: int, width: int
    ) -> list[Reducer | None]:
        rates = rates_from_removals(r_list, input_tokens, protected, self.reducer.limit)
        return [self.make_reducer(config, rate, protected, width) if rate.removed else None for rate in rates]
