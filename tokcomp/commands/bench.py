"""`tokcomp bench`: throughput of the original vs the compressed model, per runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokcomp.progress import console, warn


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)


def bench_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a tokcomp checkpoint folder")],
    runtimes: Annotated[
        list[str] | None,
        typer.Option("--runtime", "-r", help="torch | onnxruntime | cuda-eager | cuda-kernels | cuda-compile | cuda-graphs | cuda-aoti"),
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,16",
    warmup: Annotated[int, typer.Option(min=0)] = 3,
    repeats: Annotated[int, typer.Option(min=1)] = 10,
    threads: Annotated[int, typer.Option(help="CPU threads for torch and ONNX Runtime")] = 2,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="JSON file (default CHECKPOINT/bench.json)")] = None,
    markdown: Annotated[Path | None, typer.Option(help="also write the table as Markdown")] = None,
    original: Annotated[str | None, typer.Option(help="source of the original model, when the checkpoint cannot rebuild it")] = None,
) -> None:
    """Median throughput after warm-up, original vs compressed, in one run; writes a table and JSON.

    Each figure is stored with the machine's load and its run-to-run spread; a noisy one is marked and warned about.
    """
    from tokcomp.commands.export import parse_batch_sizes
    from tokcomp.errors import TokcompError
    from tokcomp.export.artifacts import atomic_file
    from tokcomp.export.bench import RESULT_KIND, available_runtimes, bench_pair, checkpoint_pair, markdown_table
    from tokcomp.fileio import check_output_file, kind_comment, write_json
    from tokcomp.progress import step

    chosen = runtimes or available_runtimes()
    unknown = [r for r in chosen if r not in available_runtimes()]
    if unknown:
        raise TokcompError(f"runtimes {unknown} are not available here", hint=f"available: {', '.join(available_runtimes())}")
    sizes = parse_batch_sizes(batch_sizes)
    # Checked before the work; bench replaces its own earlier results, never another file.
    output = check_output_file(output or checkpoint / "bench.json", force=True, kind=RESULT_KIND)
    if markdown:
        markdown = check_output_file(markdown, force=True, kind=RESULT_KIND)
    with step(f"loading {checkpoint}"):
        pair = checkpoint_pair(checkpoint, original)
    with step(f"benchmarking {', '.join(chosen)} at batch {batch_sizes}"):
        onnx = _validated_onnx(checkpoint)
        result = bench_pair(pair, chosen, sizes, warmup, repeats, threads, compressed_onnx=onnx, on_result=_report_row)
    result["checkpoint"] = str(checkpoint.resolve())
    write_json(output, result)
    if output.resolve() == (checkpoint / "bench.json").resolve():
        from tokcomp.model_card import write_card

        write_card(checkpoint)  # the card cites the speed it now has
    if markdown:
        with atomic_file(markdown) as tmp:
            tmp.write_text(kind_comment(RESULT_KIND) + markdown_table(result))
    console.print(_table(result))
    if result["noisy"]:
        warn("results marked (noisy) were measured on a busy machine or varied run to run; re-run on a quiet machine")
    print(output.resolve())


def _report_row(row: dict) -> None:
    from tokcomp.export.bench import speedup_text

    console.print(f"{row['runtime']} batch {row['batch_size']}: {speedup_text(row)}", highlight=False)
    if row["noisy"]:
        warn(f"{row['runtime']} batch {row['batch_size']} is noisy: {'; '.join(row['noise'])}")


def _validated_onnx(checkpoint: Path) -> Path | None:
    """The checkpoint's portable ONNX, if it was exported and passed validation."""
    from tokcomp.checkpoint import read_state

    for entry in read_state(checkpoint).exports:
        if entry.get("format") == "onnx" and entry.get("validation", {}).get("passed"):
            return checkpoint / entry["file"]
    return None


def _table(result: dict) -> Table:
    from tokcomp.export.bench import speedup_text

    ideal = result["flops"].get("ideal_speedup")
    table = Table("runtime", "batch", "original img/s", "compressed img/s", "speed-up", "FLOPs speed-up")
    for row in result["results"]:
        table.add_row(
            row["runtime"],
            str(row["batch_size"]),
            f"{row['original']['throughput']:.1f}",
            f"{row['compressed']['throughput']:.1f}",
            speedup_text(row),
            f"{ideal:.2f}x" if ideal else "-",
        )
    return table
