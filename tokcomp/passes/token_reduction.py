"""What every token-reduction pass shares: rewriting blocks, installing reducers, metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from tokcomp.analysis.flops import model_macs
from tokcomp.errors import RecipeError
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.schedule import tokens_after_layers
from tokcomp.surgery import find_adapter, rewrite_blocks
from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.block import TokenBlock


@dataclass
class BlockSite:
    """A model prepared for token reduction: its adapter, rewritten blocks and their names."""

    adapter: Adapter
    blocks: list[TokenBlock]
    names: list[str]
    protected: int  # leading tokens no reducer may remove

    @classmethod
    def prepare(cls, model: nn.Module, pass_name: str) -> BlockSite:
        adapter = find_adapter(model)
        container, _ = adapter.block_list(model)
        blocks = rewrite_blocks(model, adapter)
        if any(block.reducer is not None for block in blocks):
            raise RecipeError(
                f"pass '{pass_name}' found token reduction already installed by an earlier pass",
                hint="use one token-reduction pass per recipe",
            )
        names = [f"{container}.{i}" for i in range(len(blocks))]
        return cls(adapter, blocks, names, adapter.protected_tokens(model))

    def install(self, reducers: list[Reducer | None], proportional_attention: bool) -> None:
        for block, reducer in zip(self.blocks, reducers, strict=True):
            block.reducer = reducer
            block.proportional_attention = proportional_attention


def geometry_of(model: nn.Module, spec: InputSpec) -> Geometry:
    return find_adapter(model).geometry(model, spec)


def token_metadata(site: BlockSite, geometry: Geometry, reducers: list[Reducer | None]) -> dict[str, Any]:
    """Metadata every token pass records: family, protected tokens, and static token counts."""
    tokens = tokens_after_layers(geometry.input_tokens, reducers)
    return {
        "family": site.adapter.family,
        "protected": site.protected,
        "input_tokens": geometry.input_tokens,
        "tokens_per_layer": tokens,
        "gmacs": model_macs(geometry, tokens) / 1e9,
    }
