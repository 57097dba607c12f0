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


def apply(model: nn.Module, passes: list[dict[str, Any]], **kwargs) -> nn.Module:
    """In-memory surgery, e.g. tokcomp.apply(model, [{"type": "tome", "r": 8}]); returns the model."""
    return apply_passes(model, passes, **kwargs)


__all__ = ["apply", "compile", "load"]
