"""The Python API beside the CLI: compile, apply, load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tokcomp.checkpoint import load
from tokcomp.pipeline import apply_passes, compile_recipe
from tokcomp.recipe import Recipe, load_recipe, recipe_from_dict


def compile(recipe: str | Path | dict[str, Any] | Recipe, output_dir: str | Path, force: bool = False) -> Path:
    """Run a recipe (a YAML path, a dict, or a parsed Recipe) and write the checkpoint to output_dir."""
    if isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return compile_recipe(recipe, output_dir, force=force)


def apply(
    model: nn.Module,
    passes: list[dict[str, Any]],
    *,
    image_size: int | None = None,
    sequence_length: int | None = None,
    seed: int = 0,
    processor=None,
    calibration: dict[str, Any] | None = None,
    pooling: str | None = None,
) -> nn.Module:
    """In-memory surgery, e.g. tokcomp.apply(model, [{"type": "tome", "target_flops": "-35%"}], image_size=224).

    Budgets (`r`, `target_flops`, schedules) are resolved at the reference input, `image_size`
    for vision models and `sequence_length` for text models (default: the model config's image
    size, 128 tokens), and applied as a rate of each input's own tokens, so the model is right
    at every resolution and length. The tokens each block keeps at the reference input are
    logged. `processor` and `calibration` (a recipe's calibration section, e.g. {"data":
    "zoo:prose-calib:en", "samples": 400}) are for passes that calibrate on data (`rates: learned`
    on Whisper, `cost: learned`). `pooling` ("mean" or "cls"): the embedding `cost: learned` measures
    merges on; by default mean for text models without a pooler, else CLS, so give "mean" for a
    mean-pooled sentence encoder such as all-MiniLM-L6-v2. Returns the model, rewritten in place.
    """
    apply_passes(
        model,
        passes,
        image_size=image_size,
        sequence_length=sequence_length,
        seed=seed,
        processor=processor,
        calibration=calibration,
        pooling=pooling,
    )
    return model


__all__ = ["apply", "compile", "load"]
