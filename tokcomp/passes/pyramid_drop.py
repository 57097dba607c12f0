"""Pass `pyramid_drop`: drop prompt tokens in prefill at several stage ends (PyramidDrop).

The layers are split into stages at `layers` (e.g. 2, 6, 12 of Gemma-3-270m's 18): the
first stage sees the whole prompt, and at the end of each later stage's first layer minus
one (as in FastV, before that layer's MLP) each sample keeps the share `keep` (lambda) of
the reducible tokens still present, ranked by the attention its last prompt token pays
them (reducers/attention_drop.py). Shares compose: keep 0.5 at three stage ends leaves
50%, 25% and 12.5% of the span. `target_keep` instead names the share left after the last
stage, and each stage keeps its equal root.

Counts are resolved at the reference prompt as cumulative shares, kept_s = round(r0 x
share^s), so the schedule is exact there; every other prompt loses the same shares of its
own span (reducers/rate.py). Span (sink, question, per-call spans), positions and the KV
cache behave as in `fastv`.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field, model_validator

from tokcomp.errors import RecipeError
from tokcomp.passes.base import Pass, register_pass
from tokcomp.passes.fastv import (
    LastTokenRanking,
    ScorePooling,
    cumulative_rates,
    decoder_site,
    install_drops,
    recorded_ranking,
    reference_reducible,
    set_span,
    warn_windowed_ranking,
)
from tokcomp.passes.token_reduction import BlockSite, token_metadata
from tokcomp.reducers.rate import Rate


class PyramidDropConfig(LastTokenRanking):
    layers: list[int] = Field(
        default_factory=lambda: [2, 6, 12], description="stage ends: layers that see the span before each drop"
    )
    keep: float | None = Field(None, gt=0, le=1, description="share of the remaining span each stage keeps (lambda)")
    target_keep: float | None = Field(None, gt=0, le=1, description="share of the span left after the last stage")

    @model_validator(mode="after")
    def _one_budget(self):
        if self.keep is not None and self.target_keep is not None:
            raise ValueError("give keep (per stage) or target_keep (overall), not both")
        return self

    def stage_share(self) -> float:
        """The share of the span each stage keeps (keep, or the equal root of target_keep; default 0.5)."""
        if self.target_keep is not None:
            return self.target_keep ** (1 / len(self.layers))
        return 0.5 if self.keep is None else self.keep


def stage_rates(share: float, stages: int, reducible: int) -> list[Rate]:
    """Per-stage rates at the reference prompt: stage s leaves round(reducible x share^s) tokens."""
    return cumulative_rates([share**stage for stage in range(1, stages + 1)], reducible)


@register_pass
class PyramidDropPass(Pass):
    name = "pyramid_drop"
    version = 2  # 2: the ranking's pooling is recorded (version-1 records rank unpooled)
    Config = PyramidDropConfig
    summary = "PyramidDrop: drop the prompt tokens the last token attends to least at several stage ends, in prefill"

    def apply(self, model, config: PyramidDropConfig, ctx) -> dict[str, Any]:
        site = self._site(model, config)
        geometry, reducible = reference_reducible(model, ctx, config, self.name)
        rates = stage_rates(config.stage_share(), len(config.layers), reducible)
        ranking = config.ranking()
        reducers = self._install(site, config, ranking, rates)
        warn_windowed_ranking(site, [layer - 1 for layer in config.layers], self.name)
        return {
            **token_metadata(site, geometry, reducers),
            "rates": [rate.to_json() for rate in rates],
            "ranking": ranking.model_dump(),
        }

    def restore(self, model, config: PyramidDropConfig, metadata: dict[str, Any]) -> None:
        rates = [Rate(*rate) for rate in metadata["rates"]]
        self._install(self._site(model, config), config, recorded_ranking(metadata), rates)

    def _site(self, model, config: PyramidDropConfig) -> BlockSite:
        site = decoder_site(model, self.name)
        layers, count = config.layers, len(site.blocks)
        if not layers or any(b <= a for a, b in itertools.pairwise(layers)) or layers[0] < 1:
            raise RecipeError(
                f"pyramid_drop layers {layers}: stage ends must be a non-empty, strictly increasing list from 1",
                hint=f"list layers in increasing order between 1 and {count - 1}, e.g. [2, {count // 3}, {count // 2}]",
            )
        if layers[-1] >= count:
            raise RecipeError(
                f"pyramid_drop layer {layers[-1]}: the model has {count} layers",
                hint=f"choose stage ends from 1 to {count - 1}",
            )
        set_span(site, config)
        return site

    @staticmethod
    def _install(site: BlockSite, config: PyramidDropConfig, ranking: ScorePooling, rates: list[Rate]) -> list:
        return install_drops(site, ranking, {layer - 1: rate for layer, rate in zip(config.layers, rates, strict=True)})
