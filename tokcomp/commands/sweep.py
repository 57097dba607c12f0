"""`tokcomp sweep`: the accuracy / fidelity vs FLOPs curve of one recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokcomp.progress import console


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_cmd)


def sweep_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML with one token-reduction pass")],
    budgets: Annotated[
        str,
        typer.Option(
            "--budgets", help='comma-separated FLOPs budgets: fractions (0.9,0.7,0.5), cuts ("-30%") or GMACs ("2.9G")'
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for sweep.csv/png/json and checkpoints")],
    data: Annotated[str | None, typer.Option("--data", help="override the recipe's evaluation data")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="override evaluation samples")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="override evaluation batch size")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output folder")] = False,
) -> None:
    """Compile RECIPE at every budget and write the trade-off curve (PNG + CSV); prints the CSV path last."""
    from tokcomp.evaluation.sweep import SweepSettings, parse_budgets, run_sweep
    from tokcomp.fileio import read_json
    from tokcomp.recipe import load_recipe

    parsed = parse_budgets(budgets)  # a typo fails before the recipe or any model loads
    out = run_sweep(load_recipe(recipe), parsed, output, SweepSettings(data, samples, batch_size), force=force)
    console.print(_table(read_json(out / "sweep.json")["rows"]))
    print((out / "sweep.csv").resolve())


def _cell(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = (  # (header, key, digits); columns with no value in any row are left out
    ("GMACs", "gmacs", 3),
    ("x FLOPs", "flops_ratio", 3),
    ("cosine", "cosine_mean", 4),
    ("top-1 agree", "top1_agreement", 3),
    ("top-1 acc", "top1_accuracy", 3),
    ("random-drop cos", "random_drop_cosine_mean", 4),
)


def _table(rows: list[dict]) -> Table:
    used = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)]
    table = Table("budget", "final tokens", *(c[0] for c in used))
    for r in rows:
        table.add_row(str(r["budget"]), str(r["final_tokens"]), *(_cell(r[key], digits) for _, key, digits in used))
    return table
