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
    """The zoo's models (with whether they are cached) and its data sets, by their full ids."""
    from tokcomp import zoo
    from tokcomp.data.sources import ZOO_DATA
    from tokcomp.zoo.speech import SOURCES as SPEECH_SOURCES

    models = Table("model id", "modality", "cached", "description", title="models")
    for item in zoo.list_models():
        cached = "yes" if item["cached"] else "no"
        models.add_row(f"zoo:{item['name']}", item["modality"], cached, item["description"])
    console.print(models)
    data = Table("data id", "modality", "description", title="data (recipes' data:, --data)")
    for data_id, (modality, description) in ZOO_DATA.items():
        data.add_row(data_id, modality, description)
    console.print(data)
    speech = ", ".join(SPEECH_SOURCES)
    console.print(f"speech clips with transcripts (tokcomp.zoo.speech.speech_clips): {speech}", highlight=False)


@zoo_app.command("pull")
def zoo_pull(
    name: Annotated[str, typer.Argument(help="zoo model name, e.g. dinov2-small")],
    force: Annotated[bool, typer.Option("--force", help="rebuild even if cached")] = False,
) -> None:
    """Materialise a zoo model; prints its local folder as the last line."""
    from tokcomp import zoo

    print(zoo.pull(name, force=force))
