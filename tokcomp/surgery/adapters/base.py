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

from tokcomp.errors import RecipeError
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
    # Decoders: q/k/v/o projections per token (grouped-query heads), the query heads' width H*d, causal
    # attention, and each layer's sliding window (None: full). Encoders keep the defaults (4 C^2, C, N^2).
    attention_macs_per_token: int | None = None
    attention_width: int | None = None
    causal: bool = False
    windows: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class InputSpec:
    """Reference input the token counts refer to."""

    modality: Literal["image", "text", "audio"]  # audio: sequence_length counts encoder positions
    image_size: int | None = None
    sequence_length: int | None = None


class Adapter(ABC):
    family: str = ""
    description: str = ""
    modality: Literal["image", "text", "audio"] = "image"

    @abstractmethod
    def matches(self, model: nn.Module) -> bool: ...

    @abstractmethod
    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
        """(qualified name, container) of the transformer blocks."""

    def prepare_model(self, model: nn.Module) -> None:
        """Model-level changes beside the blocks, made once before they are rewritten (default: none)."""

    @abstractmethod
    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock: ...

    @abstractmethod
    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry: ...

    def protected_tokens(self, model: nn.Module) -> int:
        """Leading tokens no reducer may remove (CLS, distillation token)."""
        return 1

    def default_input(
        self, model: nn.Module, image_size: int | None = None, sequence_length: int | None = None
    ) -> InputSpec:
        """The reference input: the given size, else the model's own (image) or 128 tokens (text)."""
        if self.modality == "image":
            return InputSpec("image", image_size=image_size or int(model.config.image_size))
        return InputSpec("text", sequence_length=sequence_length or 128)

    def check_input(self, model: nn.Module, spec: InputSpec) -> None:
        """Refuse a reference input the model cannot take (a sequence longer than its positions,
        an image size that is not a whole number of patches)."""
        if spec.modality == "text":
            limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if limit is not None and spec.sequence_length > limit:
                raise RecipeError(
                    f"sequence_length {spec.sequence_length} is longer than the {limit} positions this model has",
                    hint=f"choose a sequence_length of at most {limit}",
                )
            return
        fixed = self.fixed_image_size(model)
        if fixed is not None and spec.image_size != fixed:
            raise RecipeError(
                f"image_size {spec.image_size}: this {self.family} model takes {fixed} px images only "
                "(its position embeddings are not interpolated)",
                hint=f"use image_size {fixed}, or a model that interpolates positions (DINOv2)",
            )
        patch = self.patch_size(model)
        if spec.image_size % patch or spec.image_size < 2 * patch:
            low, high = max(2, spec.image_size // patch) * patch, (spec.image_size // patch + 1) * patch
            raise RecipeError(
                f"image_size {spec.image_size} is not a whole number of {patch}-px patches (at least 2 per side)",
                hint=f"use a multiple of {patch}, e.g. {low} or {high}",
            )

    def patch_size(self, model: nn.Module) -> int:
        return int(model.config.patch_size)

    def fixed_image_size(self, model: nn.Module) -> int | None:
        """The one image size the model accepts, or None when it takes any (interpolated positions)."""
        return None
