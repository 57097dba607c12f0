"""Console output shared by every command (rich, on stderr): steps, progress bars, messages.

A long command is a sequence of `step(...)`s. On a terminal a running step shows a
spinner with its elapsed time, and the progress bars of its loops appear under it;
in a log file (not a terminal) nothing is redrawn. Either way every finished step
prints one line with its duration. TOKCOMP_QUIET=1 silences all of it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from tokcomp.errors import Interrupted

# soft_wrap: a long path stays on one line (a log's reader or a test can find it whole).
console = Console(stderr=True, soft_wrap=True)

_display: list[Progress] = []  # the live display of the running steps, on a terminal


def quiet() -> bool:
    return os.environ.get("TOKCOMP_QUIET") == "1"


def info(message: str) -> None:
    if not quiet():
        console.print(message, highlight=False)


def warn(message: str) -> None:
    """A warning is shown even when TOKCOMP_QUIET=1: it says a result may not be what it seems."""
    console.print(f"[yellow]warning:[/] {message}", highlight=False)


@contextlib.contextmanager
def step(description: str, *, log_duration: bool = True) -> Iterator[None]:
    """A named part of a command: a spinner while it runs (terminal), one line with its duration when done
    (unless `log_duration` is false because the work inside logs its own)."""
    started = time.perf_counter()
    try:
        with _spinner(description):
            yield
    except Interrupted as exc:
        exc.step = exc.step or description  # the innermost step sees it first: Ctrl-C's message names it
        raise
    if log_duration:
        info(f"{description} [dim]({time.perf_counter() - started:.1f}s)[/]")


class _CountColumn(ProgressColumn):
    """"3/10" for a loop; nothing for a step that has no count."""

    def render(self, task: Task) -> Text:
        return Text("" if task.total is None else f"{int(task.completed)}/{int(task.total)}")


def _new_display(transient: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _CountColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=quiet() or not console.is_terminal,
    )


@contextlib.contextmanager
def _spinner(description: str) -> Iterator[None]:
    with progress_bar(transient=True) as display:
        task = display.add_task(description, total=None, status="")
        try:
            yield
        finally:
            display.remove_task(task)


@contextlib.contextmanager
def progress_bar(*, transient: bool = False) -> Iterator[Progress]:
    """A progress display with count, status, elapsed time and ETA.

    Inside a running step the step's own display is shared (rich shows one live
    display at a time); the tasks added to it are removed when the block ends.
    """
    if _display:
        display = _display[-1]
        before = set(display.task_ids)
        try:
            yield display
        finally:
            for task in set(display.task_ids) - before:
                display.remove_task(task)
        return
    display = _new_display(transient)
    _display.append(display)
    try:
        with display:
            yield display
    finally:
        _display.pop()
