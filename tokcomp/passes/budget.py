"""Token budgets shared by reduction passes: r per layer, a schedule, or a FLOPs target.

A budget is resolved at the reference input (tokens removed per block there) and
applied as a rate of each input's own tokens (reducers/rate.py).

`r` is how many tokens a block removes at the reference input (ToMe's convention): an
int for every block, a per-block list, or ToMe's {r, inflect} schedule. `target_flops`
instead picks the constant r whose FLOPs land closest to the target (a fraction 0.62, a
cut "-38%", or absolute GMACs "2.9G"), counting any learned model a reducer runs
(`Reducer.overhead_macs`); with `rates: learned` the per-block counts are searched for that
target on calibration data instead (calibrate/learned_rates.py).
Budgets the model cannot meet are refused with the range it can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.errors import RecipeError
from tokcomp.passes.base import PassConfig, StrictModel
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.schedule import inflect_schedule, tokens_after_layers
from tokcomp.surgery.adapters.base import Geometry

# Reducers per block for a list of r per block (None where a block keeps every token).
ReducerFactory = Callable[[list[int]], Sequence[Reducer | None]]


class InflectSchedule(StrictModel):
    r: int
    inflect: float


class RateSearch(StrictModel):
    """Settings of the `rates: learned` search (calibrate/learned_rates.py)."""

    clips: int = Field(16, ge=1, description="calibration clips the candidates are scored on")
    evaluations: int = Field(30, ge=1, description="schedules the search scores")
    max_new_tokens: int = Field(64, ge=1, description="cap on each clip's teacher transcript")


class BudgetConfig(PassConfig):
    r: int | list[int] | InflectSchedule | None = None
    target_flops: float | str | None = None
    rates: Literal["constant", "learned"] = Field(
        "constant",
        description="with target_flops: the same r in every block (constant), or per-block counts searched on "
        "calibration data (learned; speech encoders)",
    )
    search: RateSearch | None = Field(None, description="settings of the learned search (rates: learned only)")

    @field_validator("target_flops", mode="before")
    @classmethod
    def _not_a_bool(cls, value):
        if isinstance(value, bool):  # YAML `true` would otherwise read as 1.0
            raise ValueError('target_flops is a fraction (0.62), a cut ("-38%") or GMACs ("2.9G"), not true/false')
        return value

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.r is None) == (self.target_flops is None):
            raise ValueError("give exactly one of 'r' (int, per-layer list, or {r, inflect}) and 'target_flops'")
        if self.rates == "learned" and self.target_flops is None:
            raise ValueError("rates: learned searches per-block counts for a 'target_flops'; give one instead of 'r'")
        if self.search is not None and self.rates != "learned":
            raise ValueError("'search' settings apply to rates: learned only")
        return self

    @property
    def search_settings(self) -> RateSearch:
        return self.search or RateSearch()


def resolve_r_list(
    config: BudgetConfig,
    selected: list[bool],
    geometry: Geometry,
    make_reducers: ReducerFactory,
    pass_name: str,
    protected: int,
) -> list[int]:
    """Tokens each block removes at the reference input (0 where a block is not selected)."""
    layers = len(selected)
    if config.target_flops is not None:
        r_list = _constant_r_for_target(config.target_flops, selected, geometry, make_reducers, pass_name)
    elif isinstance(config.r, int):
        r_list = [config.r] * layers
    elif isinstance(config.r, InflectSchedule):
        r_list = inflect_schedule(config.r.r, config.r.inflect, layers)
    else:
        if len(config.r) != layers:
            raise RecipeError(f"r lists {len(config.r)} values but the model has {layers} blocks")
        r_list = list(config.r)
    _check_r(r_list, geometry, protected)
    return [r if chosen else 0 for r, chosen in zip(r_list, selected, strict=True)]


def _check_r(r_list: list[int], geometry: Geometry, protected: int) -> None:
    """r counts tokens: not negative, and not more than the first block can remove at all."""
    most = geometry.input_tokens - protected
    for index, r in enumerate(r_list):
        where = "r" if len(set(r_list)) == 1 else f"r[{index}]"
        if r < 0:
            raise RecipeError(f"{where} = {r} is negative", hint="r is the number of tokens a block removes: 0 or more")
        if r > most:
            raise RecipeError(
                f"{where} = {r} is more than the {most} reducible tokens of the reference input "
                f"({geometry.input_tokens} tokens, {protected} protected)",
                hint="a block removes at most half its tokens; use target_flops to choose r from a FLOPs budget",
            )


def _constant_r_for_target(
    target_flops: float | str, selected: list[bool], geometry: Geometry, make_reducers: ReducerFactory, pass_name: str
) -> list[int]:
    original = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    target = resolve_flops_target(target_flops, original)
    candidates = []
    for r in range(geometry.input_tokens // 2 + 1):
        reducers = make_reducers([r if s else 0 for s in selected])
        candidates.append((r, model_macs(geometry, tokens_after_layers(geometry.input_tokens, reducers), reducers)))
    reachable = sorted({macs for _, macs in candidates if macs < original})
    if not reachable:
        raise RecipeError(f"{pass_name} cannot remove any token of this model's reference input")
    if not reachable[0] <= target <= original:
        raise RecipeError(
            f"target_flops {target_flops!r} is {_describe(target, original)}; reachable with {pass_name} on this "
            f"model: {_cut(reachable[-1], original)} to {_cut(reachable[0], original)} "
            f"({reachable[-1] / 1e9:.3f} to {reachable[0] / 1e9:.3f} GMACs)",
            hint="choose a target_flops inside that range",
        )
    best_r = min(candidates, key=lambda c: abs(c[1] - target))[0]
    return [best_r] * geometry.num_layers


def _cut(macs: float, original: float) -> str:
    return f"-{100 * (1 - macs / original):.1f}%"


def _describe(target: float, original: float) -> str:
    if target <= 0:
        return "at or below 0 FLOPs"
    if target > original:
        return f"{target / 1e9:.3f} GMACs, above the original {original / 1e9:.3f} GMACs"
    return f"{target / 1e9:.3f} GMACs (a cut of {_cut(target, original)}), beyond what the model can reach"
