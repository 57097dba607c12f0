"""The `tokcomp` command line (typer). Commands live in tokcomp/commands/, one module each.

Every way a command can end is one of: success (0); a one-line `error: ...` naming the
problem and the fix (2; --debug adds the traceback); Ctrl-C or SIGTERM, one line naming
the step that was interrupted (130 / 143). Outputs are atomic, so none is half-written.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.markup import escape

from tokcomp import __version__, commands
from tokcomp.errors import Interrupted, TokcompError, storage_error
from tokcomp.progress import console

# click's exception classes, wherever this typer version takes click from (its own copy or the package).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Token-reduction model surgery and compilation.")
_state = {"debug": False, "command": None}

# Warnings that say nothing about the user's run: the image processors' and the ONNX exporter's
# notes that torchvision (an optional dependency tokcomp never uses) is missing.
_HARMLESS_LOGS = {
    "transformers.utils.import_utils": "requires torchvision (not installed)",
    "torch.onnx._internal.exporter._registration": "torchvision is not installed",
}


def _show_version(value: bool) -> None:
    if value:
        print(f"tokcomp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    _state["debug"] = debug
    _state["command"] = ctx.invoked_subcommand


for _module in pkgutil.iter_modules(commands.__path__):
    importlib.import_module(f"{commands.__name__}.{_module.name}").register(app)


def main() -> None:
    """Entry point: runs the command and turns every way it can fail into one line and an exit code."""
    _quiet_third_party()
    _state["command"] = None
    try:
        with _interruptible():
            code = app(prog_name="tokcomp", standalone_mode=False)
    except TokcompError as exc:
        _fail(exc, exc.exit_code)
    except Interrupted as exc:
        _fail(_interrupted_message(exc), exc.exit_code)
    except _CLICK_ERROR as exc:
        _click_error(exc)
    except typer.Abort:
        _fail("aborted", 1)
    except Exception as exc:  # a full disk or a read-only folder is the user's to fix; anything else is a bug
        error = storage_error(exc)
        if error is None or _state["debug"]:
            raise
        _fail(error, error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _click_error(exc: Exception) -> None:
    if type(exc).__name__ == "NoArgsIsHelpError":  # `tokcomp` or `tokcomp zoo` alone: the help text
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(exc, _USAGE_ERROR):  # missing argument, bad option: click's message, on one line
        command = exc.ctx.command_path if exc.ctx else "tokcomp"
        _fail(f"{exc.format_message()} (see `{command} --help`)", exc.exit_code)
    _fail(exc.format_message(), exc.exit_code)


def _fail(message: object, exit_code: int) -> None:
    if _state["debug"]:
        traceback.print_exc()
    console.print(f"[red]error:[/] {escape(str(message))}", highlight=False)
    sys.exit(exit_code)


def _interrupted_message(exc: Interrupted) -> str:
    command = f"tokcomp {_state['command']}" if _state["command"] else "tokcomp"
    where = f" while {exc.step}" if exc.step else ""
    return f"{command} interrupted ({exc.signal_name}){where}; nothing half-written was left"


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise Interrupted, even where the parent shell had SIGINT ignored
    (a background job); the handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_third_party() -> None:
    """No Hugging Face progress bars (tokcomp shows its own) and no known-harmless warnings."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    for name, text in _HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if not any(getattr(f, "tokcomp_text", None) == text for f in logger.filters):
            logger.addFilter(_DropMessage(text))


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.tokcomp_text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.tokcomp_text not in record.getMessage()


if __name__ == "__main__":
    main()
