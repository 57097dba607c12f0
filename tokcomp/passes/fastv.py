"""Pass `fastv`: drop prompt tokens inside prefill, after the first `layer` layers (FastV).

The first `layer` layers see the whole prompt; at the end of layer `layer` - 1's attention
each sample keeps the share `keep` of its own reducible tokens that its last token attends
to most (head-averaged), and every later layer (and its KV cache) holds only those. Dropping
before that layer's MLP equals dropping after it: the MLP is per token, and the dropped
tokens' outputs are never read again.

The reducible span is every prompt token but the first `sink` (attention sinks) and the
last `question` ones, or (`span: call`) only the tokens each call marks with
`reducible_span`. Kept tokens keep their original positions (rotary, masks) and order.
The budget is a rate (reducers/rate.py): `keep` of each prompt's own reducible tokens, so a
prompt of any length (and every sample of a padded batch) loses the same share; one
shorter than sink + question loses nothing.

The helpers below (the decoder site, the span settings, installing drops) are shared by
every decoder prefill pass (`pyramid_drop`, `snapkv`, `streaming_llm`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from tokcomp.errors import RecipeError
from tokcomp.passes.base import Pass, PassConfig, register_pass
from tokcomp.passes.token_reduction import BlockSite, geometry_of, token_metadata
from tokcomp.progress import warn
from tokcomp.reducers.attention_drop import LastQueryAttentionDrop
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.adapters.decoder import DecoderAdapter


class DecoderSpanConfig(PassConfig):
    """The reducible span of a decoder prompt, shared by every decoder prefill pass."""

    sink: int = Field(4, ge=0, description="first prompt tokens never dropped (attention sinks)")
    question: int = Field(32, ge=0, description="last prompt tokens never dropped (the question)")
    span: Literal["prompt", "call"] = Field(
        "prompt",
        description="prompt: every prompt token but sinks and question is reducible; call: only the tokens "
        "each call marks with reducible_span (a prefill without one is refused)",
    )


class ScorePooling(PassConfig):
    """Smoothing of per-token scores over neighbouring tokens before ranking (reducers/ranking.py)."""

    kernel: int = Field(7, ge=1, description="width of the 1-D pooling over neighbouring tokens' scores (odd)")
    pooling: Literal["max", "avg"] = Field("max", description="pooling of the scores over the kernel")

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel {self.kernel} must be odd (it is centred on each token)")
        return self


class LastTokenRanking(DecoderSpanConfig, ScorePooling):
    """Settings of the passes that drop by the last token's attention (fastv, pyramid_drop, gemfilter,
    learned_drop). Pooled over 15 tokens by default: a fact's value sits several tokens after the words the
    question matches, and is kept with them (chosen on the calibration split's needle prompts,
    docs/llm_prefill.md)."""

    kernel: int = Field(15, ge=1, description="width of the max pooling of the last token's attention (odd)")

    def ranking(self) -> ScorePooling:
        return ScorePooling(kernel=self.kernel, pooling=self.pooling)


# Records written before the ranking was pooled (pass version 1) ranked each token on its own.
UNPOOLED = ScorePooling(kernel=1, pooling="max")


def recorded_ranking(metadata: dict[str, Any]) -> ScorePooling:
    """The ranking a record was compiled with (version 1 records: unpooled)."""
    return ScorePooling(**metadata["ranking"]) if "ranking" in metadata else UNPOOLED


class FastVConfig(LastTokenRanking):
    keep: float = Field(0.5, gt=0, le=1, description="share of each prompt's reducible tokens kept")
    layer: int = Field(2, ge=1, description="layers that see the whole prompt (FastV's K)")


def decoder_site(model, pass_name: str) -> BlockSite:
    """The model's rewritten decoder blocks; refuses other families and a second decoder pass."""
    site = BlockSite.prepare(model, pass_name)
    if not isinstance(site.adapter, DecoderAdapter):
        raise RecipeError(
            f"{pass_name} reduces prompt tokens of decoder LLMs; {type(model).__name__} is a "
            f"{site.adapter.family} model",
            hint="use it with a decoder LLM (Gemma-3, Llama, Qwen2, Mistral), or prune / tome here",
        )
    if any(block.kv_selector is not None for block in site.blocks):
        raise RecipeError(
            f"pass '{pass_name}' found KV-cache compression already installed by an earlier pass",
            hint="use one token-reduction pass per recipe",
        )
    return site


def reference_reducible(model, ctx, config: DecoderSpanConfig, pass_name: str, question: int | None = None):
    """(geometry, reducible tokens of the reference prompt); refuses a span that leaves none."""
    geometry = geometry_of(model, ctx.input_spec)
    question = config.question if question is None else question
    reducible = geometry.input_tokens - config.sink - question
    if reducible <= 0:
        raise RecipeError(
            f"{pass_name}: sink {config.sink} + question {question} tokens leave nothing reducible "
            f"in the {geometry.input_tokens}-token reference prompt",
            hint="lower sink / question, or raise sequence_length",
        )
    return geometry, reducible


def keep_rate(keep: float, reducible: int) -> Rate:
    """Keep the share `keep` of `reducible` tokens: remove the rest, halves rounded up."""
    return Rate(math.floor((1 - keep) * reducible + 0.5), reducible)


def cumulative_rates(shares: list[float], reducible: int) -> list[Rate]:
    """Rates of successive drops that leave round(reducible x share) of the span after each (shares
    non-increasing): each rate is of the tokens still present, so the schedule is exact at the reference."""
    rates, present = [], reducible
    for share in shares:
        left = math.floor(reducible * share + 0.5)
        rates.append(Rate(present - left, max(present, 1)))
        present = left
    return rates


def set_span(site: BlockSite, config: DecoderSpanConfig, question: int | None = None) -> None:
    """Every block learns the span settings; the first block builds the protected flags from them."""
    site.protected = config.sink + (config.question if question is None else question)
    for block in site.blocks:
        block.sink, block.question = config.sink, config.question if question is None else question
        block.span_from_call = config.span == "call"


def install_drops(site: BlockSite, ranking: ScorePooling, rates: dict[int, Rate]) -> list:
    """Attention drops at the given layers (index -> rate); installed even at keep 1.0: same path, nothing removed."""
    reducers = [None] * len(site.blocks)
    for index, rate in rates.items():
        reducers[index] = LastQueryAttentionDrop(rate, site.protected, ranking.kernel, ranking.pooling)
    site.install(reducers, proportional_attention=False)
    return reducers


def warn_windowed_ranking(site: BlockSite, indices: list[int], pass_name: str) -> None:
    """One warning when a drop ranks with a sliding-window layer: its last token cannot see (so scores zero,
    and drops first) every token further back than the window, whatever it is."""
    windowed = [(i, site.blocks[i].window) for i in indices if site.blocks[i].window is not None]
    if not windowed:
        return
    full = [i for i, block in enumerate(site.blocks) if block.window is None]
    index, window = windowed[0]
    better = next((i + 1 for i in full if i >= index), None)
    fix = (
        f"rank after a full-attention layer instead (layer {better})" if better else "rank after a full-attention layer"
    )
    warn(
        f"{pass_name} ranks tokens after layer {index + 1}, a sliding-window layer ({window} tokens): in prompts "
        f"longer than that it drops the earlier tokens unseen; {fix}"
    )


@register_pass
class FastVPass(Pass):
    name = "fastv"
    version = 2  # 2: the ranking's pooling is recorded (version-1 records rank unpooled)
    Config = FastVConfig
    summary = "FastV: drop the prompt tokens the last token attends to least, after layer K, in prefill"

    def apply(self, model, config: FastVConfig, ctx) -> dict[str, Any]:
        site = self._site(model, config)
        geometry, reducible = reference_reducible(model, ctx, config, self.name)
        rate = keep_rate(config.keep, reducible)
        ranking = config.ranking()
        reducers = self._install(site, config, ranking, rate)
        warn_windowed_ranking(site, [config.layer - 1], self.name)
        return {**token_metadata(site, geometry, reducers), "rate": rate.to_json(), "ranking": ranking.model_dump()}

    def restore(self, model, config: FastVConfig, metadata: dict[str, Any]) -> None:
        self._install(self._site(model, config), config, recorded_ranking(metadata), Rate(*metadata["rate"]))

    def _site(self, model, config: FastVConfig) -> BlockSite:
        site = decoder_site(model, self.name)
        if config.layer >= len(site.blocks):
            raise RecipeError(
                f"fastv layer {config.layer}: the model has {len(site.blocks)} layers",
                hint=f"choose a layer from 1 to {len(site.blocks) - 1}",
            )
        set_span(site, config)
        return site

    @staticmethod
    def _install(site: BlockSite, config: FastVConfig, ranking: ScorePooling, rate: Rate) -> list:
        return install_drops(site, ranking, {config.layer - 1: rate})
