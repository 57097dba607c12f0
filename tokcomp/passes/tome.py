"""Pass `tome`: ToMe bipartite soft matching in every selected block."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.errors import RecipeError
from tokcomp.passes.base import Pass, PassConfig, StrictModel, register_pass, select_blocks
from tokcomp.passes.token_reduction import BlockSite, geometry_of, token_metadata
from tokcomp.reducers.schedule import inflect_schedule, tokens_after_layers
from tokcomp.reducers.tome import ToMe


class InflectSchedule(StrictModel):
    r: int
    inflect: float


class ToMeConfig(PassConfig):
    r: int | list[int] | InflectSchedule | None = None
    target_flops: float | str | None = None
    proportional_attention: bool = True

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.r is None) == (self.target_flops is None):
            raise ValueError("give exactly one of 'r' (int, per-layer list, or {r, inflect}) and 'target_flops'")
        return self


@register_pass
class ToMePass(Pass):
    name = "tome"
    version = 1
    Config = ToMeConfig
    summary = "ToMe bipartite soft matching: merge r tokens per block"

    def apply(self, model, config: ToMeConfig, ctx) -> dict[str, Any]:
        site = BlockSite.prepare(model, self.name)
        selected = select_blocks(site.names, config)
        geometry = geometry_of(model, ctx.input_spec)
        if config.target_flops is not None:
            r_list = self._r_for_target(config, site, selected, geometry)
        else:
            r_list = self._r_from_schedule(config.r, len(site.blocks))
        r_list = [r if chosen else 0 for r, chosen in zip(r_list, selected, strict=True)]
        reducers = self._reducers(r_list, site.protected)
        site.install(reducers, config.proportional_attention)
        return {**token_metadata(site, geometry, reducers), "r_per_layer": r_list}

    def restore(self, model, config: ToMeConfig, metadata: dict[str, Any]) -> None:
        site = BlockSite.prepare(model, self.name)
        site.install(self._reducers(metadata["r_per_layer"], metadata["protected"]), config.proportional_attention)

    @staticmethod
    def _reducers(r_list: list[int], protected: int) -> list[ToMe | None]:
        return [ToMe(r, protected) if r > 0 else None for r in r_list]

    @staticmethod
    def _r_from_schedule(r, num_layers: int) -> list[int]:
        if isinstance(r, int):
            return [r] * num_layers
        if isinstance(r, InflectSchedule):
            return inflect_schedule(r.r, r.inflect, num_layers)
        if len(r) != num_layers:
            raise RecipeError(f"tome.r lists {len(r)} values but the model has {num_layers} blocks")
        return list(r)

    def _r_for_target(self, config: ToMeConfig, site: BlockSite, selected: list[bool], geometry) -> list[int]:
        """The constant r whose FLOPs land closest to the target."""
        layers = len(site.blocks)
        original = model_macs(geometry, [geometry.input_tokens] * layers)
        target = resolve_flops_target(config.target_flops, original)
        best_r, best_gap = 0, None
        for r in range(geometry.input_tokens // 2 + 1):
            reducers = self._reducers([r if s else 0 for s in selected], site.protected)
            gap = abs(model_macs(geometry, tokens_after_layers(geometry.input_tokens, reducers)) - target)
            if best_gap is None or gap < best_gap:
                best_r, best_gap = r, gap
        return [best_r] * layers
