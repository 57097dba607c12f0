"""`tokcomp compile` and `tokcomp inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokcomp.progress import console, warn


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_cmd)
    app.command("inspect")(inspect_cmd)


def compile_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    output: Annotated[Path, typer.Option("-o", "--output", help="checkpoint folder to write")],
    force: Annotated[
        bool, typer.Option("--force", help="replace an existing checkpoint folder (never any other folder)")
    ] = False,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="measure fidelity to the original (--no-eval: evaluation: false)")
    ] = True,
) -> None:
    """Compile a recipe into a compressed checkpoint; prints the checkpoint folder last."""
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe, without_evaluation

    loaded = load_recipe(recipe)
    if not evaluate:
        loaded = without_evaluation(loaded)
    out = compile_recipe(loaded, output, force=force)
    print_summary(out)
    if loaded.document.evaluation is None:
        console.print("fidelity not measured (evaluation: false or --no-eval); `tokcomp eval` measures it later")
    print(out.resolve())


def inspect_cmd(checkpoint: Annotated[Path, typer.Argument(help="a tokcomp checkpoint folder")]) -> None:
    """Per-layer tokens and FLOPs of a checkpoint (reads its JSON only)."""
    print_summary(checkpoint, per_layer=True)


def print_summary(path: Path, per_layer: bool = False) -> None:
    from tokcomp.checkpoint import read_state
    from tokcomp.evaluation.metrics import low_fidelity_warning
    from tokcomp.fileio import read_json

    state = read_state(path)
    report = read_json(path / "report.json") if (path / "report.json").is_file() else {}
    passes = ", ".join(p.name for p in state.passes)
    console.print(f"[bold]{state.base.source}[/] ({state.base.class_name}); passes: {passes}")
    flops, tokens = report.get("flops"), report.get("tokens_per_layer")
    if per_layer and flops and tokens:
        console.print(_layer_table(flops, tokens))
    if flops:
        cut = 100 * (1 - flops["ratio"])
        console.print(f"FLOPs: {flops['original']:.3f} -> {flops['compressed']:.3f} GMACs ({cut:.1f}% fewer)")
    if fidelity := report.get("fidelity"):
        console.print(_fidelity_line(fidelity), highlight=False)
        if warning := low_fidelity_warning(fidelity):
            warn(warning)


def _layer_table(flops: dict, tokens: dict) -> Table:
    table = Table("layer", "tokens in", "tokens out", "GMACs original", "GMACs compressed")
    before = tokens["input"]
    for i, after in enumerate(tokens["compressed"]):
        original, compressed = flops["per_layer"]["original"][i], flops["per_layer"]["compressed"][i]
        table.add_row(str(i), str(before), str(after), f"{original:.4f}", f"{compressed:.4f}")
        before = after
    return table


def _fidelity_line(fidelity: dict) -> str:
    from tokcomp.evaluation.metrics import transcript_fidelity_text

    if "cosine_mean" not in fidelity:  # speech: scored on transcripts
        return f"fidelity on {fidelity['samples']} clips of {fidelity['data']}: {transcript_fidelity_text(fidelity)}"
    line = f"fidelity on {fidelity['samples']} samples of {fidelity['data']}: cosine {fidelity['cosine_mean']:.4f}"
    if "top1_agreement" in fidelity:
        line += f", top-1 agreement {fidelity['top1_agreement']:.3f}"
    if baseline := fidelity.get("random_drop_baseline"):
        line += f" (random drop at the same token counts: {baseline['cosine_mean']:.4f})"
    return line
