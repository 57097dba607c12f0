"""The `tokcomp` command line (typer). Commands live in tokcomp/commands/, one module each."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Annotated

import typer

from tokcomp import commands
from tokcomp.errors import TokcompError
from tokcomp.progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Token-reduction model surgery and compilation.")
_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False) -> None:
    _state["debug"] = debug


for _module in pkgutil.iter_modules(commands.__path__):
    importlib.import_module(f"{commands.__name__}.{_module.name}").register(app)


def main() -> None:
    """Entry point: user errors print one line and exit 2; --debug shows the traceback."""
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
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors (missing argument, bad option): click's own message
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
