"""Pass `tome`: ToMe bipartite soft matching in every selected block."""

from __future__ import annotations

from typing import Any

from tokcomp.passes.base import Pass, register_pass, select_blocks
from tokcomp.passes.budget import BudgetConfig, resolve_r_list
from tokcomp.passes.token_reduction import BlockSite, geometry_of, token_metadata
from tokcomp.reducers.tome import ToMe


class ToMeConfig(BudgetConfig):
    proportional_attention: bool = True


@register_pass
class ToMePass(Pass):
    name = "tome"
    version = 1
    Config = ToMeConfig
    summary = "ToMe bipartite soft matching: merge r tokens per block"

    def apply(self, model, config: ToMeConfig, ctx) -> dict[str, Any]:
        site = BlockSite.prepare(model, self.name)
        geometry = geometry_of(model, ctx.input_spec)

        def make(r_list: list[int]) -> list[ToMe | None]:
            return self._reducers(r_list, site.protected)

        r_list = resolve_r_list(config, select_blocks(site.names, config), geometry, make)
        reducers = make(r_list)
        site.install(reducers, config.proportional_attention)
        return {**token_metadata(site, geometry, reducers), "r_per_layer": r_list}

    def restore(self, model, config: ToMeConfig, metadata: dict[str, Any]) -> None:
        site = BlockSite.prepare(model, self.name)
        site.install(self._reducers(metadata["r_per_layer"], metadata["protected"]), config.proportional_attention)

    @staticmethod
    def _reducers(r_list: list[int], protected: int) -> list[ToMe | None]:
        return [ToMe(r, protected) if r > 0 else None for r in r_list]
