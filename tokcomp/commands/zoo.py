"""`tokcomp zoo list|pull`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tokcomp.progress import console

zoo_app = typer.Typer(no_args_is_help=True, help="Real pretrained models and data that install offline.")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")


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
