"""Passes `snapkv` and `streaming_llm`: compress the KV cache after prefill.

Prefill itself is unchanged (every layer sees every prompt token; its logits are the
original model's); what the full-attention layers store in the cache for decoding shrinks
to the protected tokens plus the share `keep` of each prompt's own reducible tokens
(reducers/rate.py), chosen by a selector (reducers/kv_selection.py):

- `snapkv`: per KV head, the tokens the last `window` prompt tokens attend to most
  (summed over the window, averaged over the head's query group, pooled over `kernel`
  neighbours); the window is always kept;
- `streaming_llm`: the first `sink` tokens and the most recent ones;
- `pyramidkv`: SnapKV's scores with budgets that shrink with depth (PyramidKV): the compressed
  layers' shares form an arithmetic sequence from the first to the last, the last keeping
  `keep / beta`, the mean over the compressed layers being `keep` (the same cache bytes as
  SnapKV at the same `keep`).

Sliding-window layers are not compressed: their cache already holds at most the window
(511 entries on Gemma-3-270m), whatever the prompt's length, and a token-dropping budget
over the whole prompt has no meaning inside a window. Span settings (sink, question,
per-call spans) are the ones of `fastv`; kept entries keep their original positions.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tokcomp.passes.base import Pass, register_pass
from tokcomp.passes.fastv import DecoderSpanConfig, ScorePooling, decoder_site, keep_rate, reference_reducible, set_span
from tokcomp.passes.token_reduction import BlockSite, token_metadata
from tokcomp.reducers.kv_selection import KVSelector, ObservationWindowSelection, RecentSelection
from tokcomp.reducers.rate import Rate


class KVCacheConfig(DecoderSpanConfig):
    keep: float = Field(0.5, gt=0, le=1, description="share of each prompt's reducible tokens the cache keeps")


class SnapKVConfig(KVCacheConfig, ScorePooling):
    window: int = Field(32, ge=1, description="last prompt tokens whose attention scores the rest (always kept)")


class PyramidKVConfig(SnapKVConfig):
    beta: float = Field(20.0, gt=1, description="the deepest compressed layer keeps keep / beta")


def pyramid_keeps(keep: float, layers: int, beta: float) -> list[float]:
    """Shares kept by `layers` compressed layers, first to last: arithmetic, mean `keep`, last `keep / beta`
    (or, where the first would pass 1, first 1 and last 2 keep - 1, still of mean `keep`)."""
    if layers == 1:
        return [keep]
    last = keep / beta
    first = 2 * keep - last
    if first > 1:
        first, last = 1.0, 2 * keep - 1
    return [first + (last - first) * i / (layers - 1) for i in range(layers)]


class KVCachePass(Pass):
    """Installs one selector on every layer; only full-attention layers use it (see the module doc)."""

    def protected_question(self, config: KVCacheConfig) -> int:
        return config.question

    def make_selector(self, config: KVCacheConfig, rate: Rate) -> KVSelector:
        raise NotImplementedError

    def layer_keeps(self, config: KVCacheConfig, compressed: int) -> list[float]:
        """The share each compressed (full-attention) layer keeps, first to last."""
        return [config.keep] * compressed

    def apply(self, model, config: KVCacheConfig, ctx) -> dict[str, Any]:
        site = self._site(model, config)
        question = self.protected_question(config)
        geometry, reducible = reference_reducible(model, ctx, config, self.name, question)
        full = [i for i, block in enumerate(site.blocks) if block.window is None]  # the layers _install serves
        rates = [keep_rate(keep, reducible) for keep in self.layer_keeps(config, len(full))]
        by_layer = dict(zip(full, rates, strict=True))
        self._install(site, config, by_layer)
        cache = [
            geometry.input_tokens - by_layer[i].removed if i in by_layer else min(geometry.input_tokens, window - 1)
            for i, window in enumerate(geometry.windows)
        ]
        metadata = token_metadata(site, geometry, [None] * len(site.blocks))
        return {**metadata, "rates": {str(i): r.to_json() for i, r in by_layer.items()},
                "report": {"cache_entries_per_layer": cache}}  # fmt: skip

    def restore(self, model, config: KVCacheConfig, metadata: dict[str, Any]) -> None:
        site = self._site(model, config)
        if "rate" in metadata:  # version 1 records: one rate shared by every layer
            rates = {i: Rate(*metadata["rate"]) for i, block in enumerate(site.blocks) if block.window is None}
        else:
            rates = {int(i): Rate(*r) for i, r in metadata["rates"].items()}
        self._install(site, config, rates)

    def _site(self, model, config: KVCacheConfig) -> BlockSite:
        site = decoder_site(model, self.name)
        set_span(site, config, self.protected_question(config))
        return site

    def _install(self, site: BlockSite, config: KVCacheConfig, rates: dict[int, Rate]) -> None:
        """A selector (parameter-free, shared by the layers of one rate) on each layer `rates` names: the
        full-attention ones; sliding-window layers get none."""
        shared: dict[tuple[int, int], KVSelector] = {}
        for index, rate in rates.items():
            site.blocks[index].kv_selector = shared.setdefault(tuple(rate), self.make_selector(config, rate))


@register_pass
class SnapKVPass(KVCachePass):
    name = "snapkv"
    version = 2  # 2: a rate per compressed layer (version-1 records, one shared rate, still restore)
    Config = SnapKVConfig
    summary = "SnapKV: after prefill, each KV head caches the tokens the last prompt tokens attend to most"

    def protected_question(self, config: SnapKVConfig) -> int:
        return max(config.question, config.window)  # the observation window is always kept

    def make_selector(self, config: SnapKVConfig, rate: Rate) -> KVSelector:
        return ObservationWindowSelection(rate, config.window, config.kernel, config.pooling)


@register_pass
class StreamingLLMPass(KVCachePass):
    name = "streaming_llm"
    version = 2
    Config = KVCacheConfig
    summary = "StreamingLLM: after prefill, the KV cache keeps the attention sinks and the most recent tokens"

    def make_selector(self, config: KVCacheConfig, rate: Rate) -> KVSelector:
        return RecentSelection(rate)


@register_pass
class PyramidKVPass(SnapKVPass):
    name = "pyramidkv"
    version = 1
    Config = PyramidKVConfig
    summary = "PyramidKV: SnapKV's scores with cache budgets that shrink with depth"

    def layer_keeps(self, config: PyramidKVConfig, compressed: int) -> list[float]:
        return pyramid_keeps(config.keep, compressed, config.beta)
