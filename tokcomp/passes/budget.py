"""Token budgets shared by reduction passes: r per layer, a schedule, or a FLOPs target.

`r` is how many tokens a block removes (ToMe's convention): an int for every block,
a per-block list, or ToMe's {r, inflect} schedule. `target_flops` instead picks the
constant r whose FLOPs land closest to the target (a fraction 0.62, a cut "-38%",
or absolute GMACs "2.9G").
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import model_validator

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.errors import RecipeError
from tokcomp.passes.base import PassConfig, StrictModel
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.schedule import inflect_schedule, tokens_after_layers
from tokcomp.surgery.adapters.base import Geometry

ReducerFactory = Callable[[list[int]], list[Reducer | None]]


class InflectSchedule(StrictModel):
    r: int
    inflect: float


class BudgetConfig(PassConfig):
    r: int | list[int] | InflectSchedule | None = None
    target_flops: float | str | None = None

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.r is None) == (self.target_flops is None):
            raise ValueError("give exactly one of 'r' (int, per-layer list, or {r, inflect}) and 'target_flops'")
        return self


def resolve_r_list(
    config: BudgetConfig, selected: list[bool], geometry: Geometry, make_reducers: ReducerFactory
) -> list[int]:
    """Per-block r (0 where a block is not selected)."""
    layers = len(selected)
    if config.target_flops is not None:
        r_list = _constant_r_for_target(config.target_flops, selected, geometry, make_reducers)
    elif isinstance(config.r, int):
        r_list = [config.r] * layers
    elif isinstance(config.r, InflectSchedule):
        r_list = inflect_schedule(config.r.r, config.r.inflect, layers)
    else:
        if len(config.r) != layers:
            raise RecipeError(f"r lists {len(config.r)} values but the model has {layers} blocks")
        r_list = list(config.r)
    return [r if chosen else 0 for r, chosen in zip(r_list, selected, strict=True)]


def _constant_r_for_target(
    target_flops: float | str, selected: list[bool], geometry: Geometry, make_reducers: ReducerFactory
) -> list[int]:
    original = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    target = resolve_flops_target(target_flops, original)
    best_r, best_gap = 0, None
    for r in range(geometry.input_tokens // 2 + 1):
        reducers = make_reducers([r if s else 0 for s in selected])
        gap = abs(model_macs(geometry, tokens_after_layers(geometry.input_tokens, reducers)) - target)
        if best_gap is None or gap < best_gap:
            best_r, best_gap = r, gap
    return [best_r] * geometry.num_layers
