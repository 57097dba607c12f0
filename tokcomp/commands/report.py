"""`tokcomp report`: a self-contained HTML page showing what compression did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a tokcomp checkpoint folder")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="folder to write; default CHECKPOINT/report")
    ] = None,
    images: Annotated[int, typer.Option("--images", min=0, help="sample images for merge maps (vision models)")] = 4,
    data: Annotated[
        str | None,
        typer.Option("--data", help="images for merge maps: zoo:images | zoo:imagenet | a folder; default: compile's"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="picks which images")] = 0,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing report folder")] = False,
) -> None:
    """Tokens per layer, FLOPs, params, fidelity, eval/bench results and merge maps; prints the page's path last."""
    from tokcomp.progress import info, step
    from tokcomp.visual import write_report

    with step(f"writing the report of {checkpoint}"):
        page = write_report(checkpoint, output, force=force, images=images, data=data, seed=seed)
    info(f"open [bold]{page}[/] in a browser (self-contained: it can be mailed or attached as one file)")
    print(page.resolve())
