"""CLI commands, one module per feature. Each module defines `register(app: typer.Typer)`;
tokcomp/cli.py discovers and calls them, so adding a command touches only its module."""
