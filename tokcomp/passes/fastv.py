"""Pass `fastv`: drop prompt tokens inside prefill, after the first `layer` layers (FastV).

The first `layer` layers see the whole prompt; at the end of layer `layer` - 1's attention
each sample keeps the share `keep` of its own reducible tokens that its last token attends
to most (head-averaged), and every later layer (and its KV cache) holds only those. Dropping
before that layer's MLP equals dropping after it: the MLP is per token, and the dropped
tokens' outputs are never read again.

The reducible span is every prompt token but the first `sink` (attention sinks) and the
last `question` ones. Kept tokens keep their original positions (rotary, masks) and order.
The budget is a rate (reducers/rate.py): `keep` of each prompt's own reducible tokens, so a
prompt of any length (and every sample of a padded batch) loses the same share; one
shorter than sink + question loses nothing.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from tokcomp.errors import RecipeError
from tokcomp.passes.base import Pass, PassConfig, register_pass
from tokcomp.passes.token_reduction import BlockSite, geometry_of, token_metadata
from tokcomp.reducers.attention_drop import LastQueryAttentionDrop
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.adapters.decoder import DecoderAdapter


class FastVConfig(PassConfig):
    keep: float = Field(0.5, gt=0, le=1, description="share of each prompt's reducible tokens kept")
    layer: int = Field(2, ge=1, description="layers that see the whole prompt (FastV's K)")
    sink: int = Field(4, ge=0, description="first prompt tokens never dropped (attention sinks)")
    question: int = Field(32, ge=0, description="last prompt tokens never dropped (the question)")


@register_pass
class FastVPass(Pass):
    name = "fastv"
    version = 1
    Config = FastVConfig
    summary = "FastV: drop the prompt tokens the last token attends to least, after layer K, in prefill"

    def apply(self, model, config: FastVConfig, ctx) -> dict[str, Any]:
        site = self._site(model, config)
        geometry = geometry_of(model, ctx.input_spec)
        protected = config.sink + config.question
        reducible = geometry.input_tokens - protected
        if reducible <= 0:
            raise RecipeError(
                f"fastv: sink {config.sink} + question {config.question} tokens leave nothing reducible "
                f"in the {geometry.input_tokens}-token reference prompt",
                hint="lower sink / question, or raise sequence_length",
            )
        rate = Rate(math.floor((1 - config.keep) * reducible + 0.5), reducible)  # halves round up
        reducers = self._install(site, config, rate)
        return {**token_metadata(site, geometry, reducers), "rate": rate.to_json()}

    def restore(self, model, config: FastVConfig, metadata: dict[str, Any]) -> None:
        self._install(self._site(model, config), config, Rate(*metadata["rate"]))

    def _site(self, model, config: FastVConfig) -> BlockSite:
        site = BlockSite.prepare(model, self.name)
        if not isinstance(site.adapter, DecoderAdapter):
            raise RecipeError(
                f"fastv drops prompt tokens of decoder LLMs; {type(model).__name__} is a {site.adapter.family} model",
                hint="use fastv with a decoder LLM (Gemma-3, Llama, Qwen2, Mistral), or prune / tome here",
            )
        if config.layer >= len(site.blocks):
            raise RecipeError(
                f"fastv layer {config.layer}: the model has {len(site.blocks)} layers",
                hint=f"choose a layer from 1 to {len(site.blocks) - 1}",
            )
        site.protected = config.sink + config.question
        return site

    @staticmethod
    def _install(site: BlockSite, config: FastVConfig, rate: Rate) -> list:
        reducers = [None] * len(site.blocks)
        # Installed even at keep 1.0: the same path runs, and removes nothing.
        reducers[config.layer - 1] = LastQueryAttentionDrop(rate, config.sink + config.question)
        site.install(reducers, proportional_attention=False)
        for block in site.blocks:
            block.sink, block.question = config.sink, config.question
        return reducers
