"""Passes `snapkv` and `streaming_llm`: compress the KV cache after prefill.

Prefill itself is unchanged (every layer sees every prompt token; its logits are the
original model's); what the full-attention layers store in the cache for decoding shrinks
to the protected tokens plus the share `keep` of each prompt's own reducible tokens
(reducers/rate.py), chosen by a selector (reducers/kv_selection.py):

- `snapkv`: per KV head, the tokens the last `window` prompt tokens attend to most
  (summed over the window, averaged over the head's query group, pooled over `kernel`
  neighbours); the window is always kept;
- `streaming_llm`: the first `sink` tokens and the most recent ones.

Sliding-window layers are not compressed: their cache already holds at most the window
(511 entries on Gemma-3-270m), whatever the prompt's length, and a token-dropping budget
over the whole prompt has no meaning inside a window. Span settings (sink, question,
per-call spans) are the ones of `fastv`; kept entries keep their original positions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tokcomp.passes.base import Pass, register_pass
from tokcomp.passes.fastv import DecoderSpanConfig, decoder_site, keep_rate, reference_reducible, set_span
from tokcomp.passes.token_reduction import BlockSite, token_metadata
from tokcomp.reducers.kv_selection import KVSelector, ObservationWindowSelection, RecentSelection
from tokcomp.reducers.rate import Rate


class KVCacheConfig(DecoderSpanConfig):
    keep: float = Field(0.5, gt=0, le=1, description="share of each prompt's reducible tokens the cache keeps")


class SnapKVConfig(KVCacheConfig):
    window: int = Field(32, ge=1, description="last prompt tokens whose attention scores the rest (always kept)")
    kernel: int = Field(7, ge=1, description="width of the 1-D pooling over neighbouring tokens' scores (odd)")
    pooling: Literal["max", "avg"] = Field("max", description="pooling of the scores over the kernel")

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel {self.kernel} must be odd (it is centred on each token)")
        return self


class KVCachePass(Pass):
    """Installs one selector on every layer; only full-attention layers use it (see the module doc)."""

    def protected_question(self, config: KVCacheConfig) -> int:
        return config.question

    def make_selector(self, config: KVCacheConfig, rate: Rate) -> KVSelector:
        raise NotImplementedError

    def apply(self, model, config: KVCacheConfig, ctx) -> dict[str, Any]:
        site = self._site(model, config)
        question = self.protected_question(config)
        geometry, reducible = reference_reducible(model, ctx, config, self.name, question)
        rate = keep_rate(config.keep, reducible)
        self._install(site, config, rate)
        kept = geometry.input_tokens - rate.removed
        cache = [geometry.input_tokens if window else kept for window in geometry.windows]
        cache = [min(n, window - 1) if window else n for n, window in zip(cache, geometry.windows, strict=True)]
        metadata = token_metadata(site, geometry, [None] * len(site.blocks))
        return {**metadata, "rate": rate.to_json(), "report": {"cache_entries_per_layer": cache}}

    def restore(self, model, config: KVCacheConfig, metadata: dict[str, Any]) -> None:
        self._install(self._site(model, config), config, Rate(*metadata["rate"]))

    def _site(self, model, config: KVCacheConfig) -> BlockSite:
        site = decoder_site(model, self.name)
        set_span(site, config, self.protected_question(config))
        return site

    def _install(self, site: BlockSite, config: KVCacheConfig, rate: Rate) -> None:
        selector = self.make_selector(config, rate)  # parameter-free: one module shared by every layer
        for block in site.blocks:
            block.kv_selector = selector


@register_pass
class SnapKVPass(KVCachePass):
    name = "snapkv"
    version = 1
    Config = SnapKVConfig
    summary = "SnapKV: after prefill, each KV head caches the tokens the last prompt tokens attend to most"

    def protected_question(self, config: SnapKVConfig) -> int:
        return max(config.question, config.window)  # the observation window is always kept

    def make_selector(self, config: SnapKVConfig, rate: Rate) -> KVSelector:
        return ObservationWindowSelection(rate, config.window, config.kernel, config.pooling)


@register_pass
class StreamingLLMPass(KVCachePass):
    name = "streaming_llm"
    version = 1
    Config = KVCacheConfig
    summary = "StreamingLLM: after prefill, the KV cache keeps the attention sinks and the most recent tokens"

    def make_selector(self, config: KVCacheConfig, rate: Rate) -> KVSelector:
        return RecentSelection(rate)
