"""compile = load the base model, run the passes, measure, write the checkpoint atomically."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from tokcomp.checkpoint import save_checkpoint
from tokcomp.errors import RecipeError, UnsupportedModelError
from tokcomp.fileio import atomic_directory, check_output_folder
from tokcomp.passes import PassRecord, get_pass
from tokcomp.passes.context import PassContext
from tokcomp.progress import info, step
from tokcomp.recipe import PassSpec, Recipe
from tokcomp.sources import load_model
from tokcomp.surgery.adapters.base import InputSpec


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
    model: nn.Module,
    passes: list[dict[str, Any]],
    *,
    image_size: int | None = None,
    sequence_length: int | None = None,
    input_spec: InputSpec | None = None,
    seed: int = 0,
    processor=None,
    calibration: dict[str, Any] | None = None,
    pooling: str | None = None,
) -> list[PassRecord]:
    """In-memory surgery: validate pass dicts like [{"type": "tome", "r": 8}] and apply them.

    Budgets are resolved at the reference input (`image_size` / `sequence_length`, default
    the model's own) and applied as rates of every input's own tokens. Returns the pass
    records (with each token pass's tokens per layer at the reference input), also logged.
    `processor` (the model's processor or tokenizer) and `calibration` (a recipe's calibration
    section as a dict) are for passes that calibrate on data (`rates: learned` on Whisper with its
    WhisperProcessor, `cost: learned` with the tokenizer or image processor). `pooling` ("mean" or
    "cls") is how the model's output becomes one embedding, which `cost: learned` measures on; by
    default mean for text models without a pooler, else CLS: give "mean" for sentence encoders
    that mean-pool a model with a pooler (all-MiniLM-L6-v2 and most sentence-transformers models).
    """
    from tokcomp.recipe import CalibrationSpec, parse_pass_list
    from tokcomp.surgery import find_adapter

    specs = parse_pass_list(passes)
    if input_spec is None:
        try:
            input_spec = find_adapter(model).default_input(model, image_size, sequence_length)
        except UnsupportedModelError:  # passes that do not reduce tokens (vocabulary trimming)
            input_spec = InputSpec("text", sequence_length=sequence_length)
    if pooling not in (None, "mean", "cls"):
        raise RecipeError(f"pooling {pooling!r} is not known", hint="give 'mean' or 'cls'")
    loaded = None
    if processor is not None:
        from tokcomp.sources import LoadedModel, default_pooling

        pooling = pooling or default_pooling(model, input_spec.modality)
        loaded = LoadedModel(model, "in-memory", "transformers", type(model).__name__, input_spec, processor, pooling)
    spec = None
    if calibration is not None:
        try:
            spec = CalibrationSpec.model_validate(calibration)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise RecipeError(f"calibration {calibration!r}: {problems}", hint="keys: data, samples, augment") from None
    records = run_passes(model, specs, PassContext(input_spec, seed, calibration=spec, loaded=loaded))
    for record in records:
        if "tokens_per_layer" in record.metadata:
            tokens = record.metadata["tokens_per_layer"]
            info(
                f"{record.name}: tokens per block at the reference input ({_describe_input(input_spec)}): "
                f"{record.metadata['input_tokens']} -> {' '.join(map(str, tokens))}; "
                "any other input keeps the same share of its own tokens"
            )
    return records


def _describe_input(spec: InputSpec) -> str:
    return f"{spec.image_size} px" if spec.modality == "image" else f"{spec.sequence_length} tokens"
