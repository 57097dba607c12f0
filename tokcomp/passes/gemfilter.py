"""Pass `gemfilter`: select prompt tokens with the first layers, then run the whole model on them (GemFilter).

In prefill the model first runs its first `layer` layers over the whole prompt; at layer
`layer` - 1 each sample keeps the share `keep` of its reducible tokens that its last token
attends to most (reducers/attention_drop.py, the FastV ranking). That partial run is then
discarded and the whole model runs on the selected tokens alone, in input order, as a
contiguous prompt (`positions: contiguous`, the default) or at their original positions, so
every layer and its KV cache hold only the selected tokens. Decoding continues the chosen
positions. Span settings (sink, question, per-call spans) are the ones of `fastv`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tokcomp.errors import RecipeError
from tokcomp.passes.base import Pass, register_pass
from tokcomp.passes.fastv import (
    LastTokenRanking,
    ScorePooling,
    decoder_site,
    install_drops,
    keep_rate,
    recorded_ranking,
    reference_reducible,
    set_span,
    warn_windowed_ranking,
)
from tokcomp.passes.token_reduction import BlockSite, token_metadata
from tokcomp.reducers.rate import Rate


class GemFilterConfig(LastTokenRanking):
    keep: float = Field(0.5, gt=0, le=1, description="share of each prompt's reducible tokens selected")
    layer: int = Field(6, ge=1, description="layers the selecting run goes through (GemFilter's r)")
    positions: Literal["original", "contiguous"] = Field(
        "contiguous", description="positions of the selected tokens in the re-run: 0 .. k-1 (GemFilter's), or their own"
    )


@register_pass
class GemFilterPass(Pass):
    name = "gemfilter"
    version = 2  # 2: the ranking's pooling is recorded (version-1 records rank unpooled)
    Config = GemFilterConfig
    summary = "GemFilter: select prompt tokens by an early layer's last-token attention, then re-run on them"

    def apply(self, model, config: GemFilterConfig, ctx) -> dict[str, Any]:
        site = self._site(model, config)
        geometry, reducible = reference_reducible(model, ctx, config, self.name)
        rate = keep_rate(config.keep, reducible)
        ranking = config.ranking()
        reducers = self._install(site, config, ranking, rate)
        warn_windowed_ranking(site, [config.layer - 1], self.name)
        kept = reducers[config.layer - 1].kept_tokens(geometry.input_tokens)
        metadata = token_metadata(site, geometry, [None] * len(site.blocks))
        metadata["tokens_per_layer"] = [kept] * len(site.blocks)  # the re-run; the selecting run is reported
        report = {"selecting_run": {"layers": config.layer, "tokens": geometry.input_tokens}, "selected": kept}
        return {**metadata, "rate": rate.to_json(), "ranking": ranking.model_dump(), "report": report}

    def restore(self, model, config: GemFilterConfig, metadata: dict[str, Any]) -> None:
        self._install(self._site(model, config), config, recorded_ranking(metadata), Rate(*metadata["rate"]))

    def _site(self, model, config: GemFilterConfig) -> BlockSite:
        site = decoder_site(model, self.name)
        if config.layer > len(site.blocks):
            raise RecipeError(
                f"gemfilter layer {config.layer}: the model has {len(site.blocks)} layers",
                hint=f"choose a layer from 1 to {len(site.blocks)}",
            )
        set_span(site, config)
        return site

    @staticmethod
    def _install(site: BlockSite, config: GemFilterConfig, ranking: ScorePooling, rate: Rate) -> list:
        reducers = install_drops(site, ranking, {config.layer - 1: rate})
        site.blocks[config.layer - 1].select_only = True
        site.blocks[0].filter_contiguous = config.positions == "contiguous"
        return reducers
