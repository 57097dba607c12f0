"""Progress bars and console output shared by every long step (rich, on stderr)."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(*, transient: bool = False) -> Progress:
    """A progress bar with count, elapsed time and ETA; silent when TOKCOMP_QUIET=1."""
    disable = os.environ.get("TOKCOMP_QUIET") == "1"
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable or not sys.stderr,
    )


def info(message: str) -> None:
    if os.environ.get("TOKCOMP_QUIET") != "1":
        console.print(message)
