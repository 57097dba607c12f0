"""The `tokcomp` command line (typer)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokcomp.errors import TokcompError
from tokcomp.progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Token-reduction model surgery and compilation.")
zoo_app = typer.Typer(no_args_is_help=True, help="Real pretrained models and data that install offline.")
app.add_typer(zoo_app, name="zoo")

_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False) -> None:
    _state["debug"] = debug


@app.command("compile")
def compile_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    output: Annotated[Path, typer.Option("-o", "--output", help="checkpoint folder to write")],
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output folder")] = False,
) -> None:
    """Compile a recipe into a compressed checkpoint."""
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe

    out = compile_recipe(load_recipe(recipe), output, force=force)
    _print_summary(out)
    print(out.resolve())


@app.command("inspect")
def inspect_cmd(checkpoint: Annotated[Path, typer.Argument(help="a tokcomp checkpoint folder")]) -> None:
    """Per-layer tokens and FLOPs of a checkpoint (reads its JSON only)."""
    _print_summary(checkpoint, per_layer=True)


@zoo_app.command("list")
def zoo_list() -> None:
    """The zoo's models and whether they are cached."""
    from tokcomp import zoo

    table = Table("name", "modality", "cached", "description")
    for item in zoo.list_models():
        table.add_row(item["name"], item["modality"], "yes" if item["cached"] else "no", item["description"])
    console.print(table)


@zoo_app.command("pull")
def zoo_pull(
    name: Annotated[str, typer.Argument(help="zoo model name, e.g. dinov2-small")],
    force: Annotated[bool, typer.Option("--force", help="rebuild even if cached")] = False,
) -> None:
    """Materialise a zoo model; prints its local folder as the last line."""
    from tokcomp import zoo

    print(zoo.pull(name, force=force))


def _print_summary(path: Path, per_layer: bool = False) -> None:
    from tokcomp.checkpoint import read_state
    from tokcomp.fileio import read_json

    state = read_state(path)
    report = read_json(path / "report.json") if (path / "report.json").is_file() else {}
    console.print(f"[bold]{state.base.source}[/] ({state.base.class_name}); passes: "
                  + ", ".join(p.name for p in state.passes))
    flops, tokens = report.get("flops"), report.get("tokens_per_layer")
    if per_layer and flops and tokens:
        table = Table("layer", "tokens in", "tokens out", "GMACs original", "GMACs compressed")
        before = tokens["input"]
        for i, after in enumerate(tokens["compressed"]):
            table.add_row(str(i), str(before), str(after),
                          f"{flops['per_layer']['original'][i]:.4f}", f"{flops['per_layer']['compressed'][i]:.4f}")
            before = after
        console.print(table)
    if flops:
        console.print(f"FLOPs: {flops['original']:.3f} -> {flops['compressed']:.3f} GMACs "
                      f"({100 * (1 - flops['ratio']):.1f}% fewer)")
    fidelity = report.get("fidelity")
    if fidelity:
        line = f"fidelity on {fidelity['samples']} samples of {fidelity['data']}: cosine {fidelity['cosine_mean']:.4f}"
        if "top1_agreement" in fidelity:
            line += f", top-1 agreement {fidelity['top1_agreement']:.3f}"
        if "random_drop_baseline" in fidelity:
            line += f" (random drop at the same token counts: {fidelity['random_drop_baseline']['cosine_mean']:.4f})"
        console.print(line)


def main() -> None:
    try:
        app(standalone_mode=False)
    except TokcompError as exc:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
