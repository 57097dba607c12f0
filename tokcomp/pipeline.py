"""compile = load the base model, run the passes, measure, write the checkpoint atomically."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokcomp.checkpoint import save_checkpoint
from tokcomp.errors import RecipeError
from tokcomp.fileio import atomic_directory, check_output_folder
from tokcomp.passes import PassRecord, get_pass
from tokcomp.progress import info, step
from tokcomp.recipe import CalibrationSpec, PassSpec, Recipe
from tokcomp.sources import LoadedModel, load_model
from tokcomp.surgery.adapters.base import InputSpec


@dataclass
class PassContext:
    """What a pass may use besides the model: the reference input, calibration data settings, seed."""

    input_spec: InputSpec
    seed: int = 0
    calibration: CalibrationSpec | None = None
    loaded: LoadedModel | None = None  # passes may replace loaded.processor (e.g. a trimmed tokenizer)
    # Callables(folder) that write a pass's extra files into the checkpoint.
    file_writers: list[Callable[[Path], None]] = field(default_factory=list)


def run_passes(model: nn.Module, passes: list[PassSpec], ctx: PassContext) -> list[PassRecord]:
    records = []
    for spec in passes:
        handler = get_pass(spec.type)
        started = time.perf_counter()
        metadata = handler.apply(model, spec.config, ctx)
        info(f"pass [bold]{spec.type}[/] applied in {time.perf_counter() - started:.1f}s")
        records.append(
            PassRecord(spec.type, handler.version, spec.config.model_dump(mode="json", exclude_none=True), metadata)
        )
    return records


def compile_recipe(recipe: Recipe, output_dir: str | Path, force: bool = False) -> Path:
    """Run a recipe end to end and write the checkpoint folder; returns its path."""
    output_dir = Path(output_dir)
    # Everything that can be checked without the model fails before minutes of work, not after.
    check_output_folder(output_dir, force=force, inputs=recipe.local_inputs())
    from tokcomp.export import export_checkpoint, known_formats

    unknown = [f for f in recipe.document.export if f not in known_formats()]
    if unknown:
        raise RecipeError(f"unknown export formats {unknown}", hint=f"choose from {', '.join(known_formats())}")
    torch.manual_seed(recipe.seed)
    with step(f"loading {recipe.model.source}"):
        loaded = load_model(recipe.model)
    original = copy.deepcopy(loaded.model)
    ctx = PassContext(loaded.input_spec, recipe.seed, recipe.document.calibration, loaded)
    # No duration line of its own: each pass logs its own.
    with step(f"applying {', '.join(spec.type for spec in recipe.passes)}", log_duration=False):
        records = run_passes(loaded.model, recipe.passes, ctx)
    from tokcomp.calibrate.distributed import is_main_process

    if not is_main_process():  # under torchrun every rank runs the passes; rank 0 alone reports and writes
        return output_dir
    from tokcomp.report import build_report

    report = build_report(original, loaded, records, recipe.document.evaluation, recipe.seed)
    with step(f"writing {output_dir}"), atomic_directory(output_dir, force=force) as tmp:
        save_checkpoint(tmp, loaded, records, recipe.text, report, ctx.file_writers)
        for fmt in recipe.document.export:  # a failed export fails the compile and leaves nothing
            with step(f"exporting {fmt}"):
                export_checkpoint(tmp, fmt)
    return output_dir


def apply_passes(
    model: nn.Module, passes: list[dict[str, Any]], input_spec: InputSpec | None = None, seed: int = 0
) -> nn.Module:
    """In-memory surgery: validate pass dicts like [{"type": "tome", "r": 8}] and apply them."""
    from tokcomp.recipe import parse_pass_list
    from tokcomp.surgery import find_adapter

    specs = parse_pass_list(passes)
    if input_spec is None:
        input_spec = find_adapter(model).default_input(model)
    run_passes(model, specs, PassContext(input_spec, seed))
    return model
