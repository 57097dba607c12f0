"""Adapters: per-family knowledge of where the transformer blocks are and how they compute.

An adapter answers four questions about a model: does it handle it (`matches`), where
the blocks are (`block_list`), how to rebuild one block as a TokenBlock (`rewrite_block`),
and its geometry for FLOPs counting (`geometry`). Everything else (reducers, passes,
checkpoints) is family-agnostic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from torch import nn

from tokcomp.surgery.block import TokenBlock


@dataclass(frozen=True)
class Geometry:
    """What the FLOPs counter needs (multiply-accumulates, DiffRate's convention)."""

    num_layers: int
    hidden_size: int
    mlp_macs_per_token: int  # 2*C*I for a plain MLP, 3*C*I for SwiGLU
    input_tokens: int  # tokens entering block 0 at the reference input size
    embed_macs: int  # patch embedding: (P + 1) * C * p^2 * channels; 0 for token lookups
    head_macs: int  # classifier / pooler on top


@dataclass(frozen=True)
class InputSpec:
    """Reference input the token counts refer to."""

    modality: Literal["image", "text"]
    image_size: int | None = None
    sequence_length: int | None = None


class Adapter(ABC):
    family: str = ""
    description: str = ""
    modality: Literal["image", "text"] = "image"
    uses_mask: bool = False

    @abstractmethod
    def matches(self, model: nn.Module) -> bool: ...

    @abstractmethod
    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
        """(qualified name, container) of the transformer blocks."""

    @abstractmethod
    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock: ...

    @abstractmethod
    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry: ...

    def protected_tokens(self, model: nn.Module) -> int:
        """Leading tokens no reducer may remove (CLS, distillation token)."""
        return 1

    def default_input(self, model: nn.Module) -> InputSpec:
        config = model.config
        if self.modality == "image":
            return InputSpec("image", image_size=int(config.image_size))
        return InputSpec("text", sequence_length=128)
