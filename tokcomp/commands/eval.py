"""`tokcomp eval`: accuracy and fidelity of a checkpoint against its original model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokcomp.progress import console, warn

DEFAULT_NAME = "eval.json"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a tokcomp checkpoint folder")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="zoo:imagenet | zoo:images | zoo:text | an image folder (class sub-folders = labels) | a .txt/.jsonl "
            "file; default: the zoo's data for the model's modality",
        ),
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="score a seeded subset of this size")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    seed: Annotated[int, typer.Option("--seed", help="picks the subset when --samples is smaller")] = 0,
    fidelity: Annotated[
        bool, typer.Option("--fidelity/--no-fidelity", help="also run the original model and compare outputs")
    ] = True,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help=f"JSON to write; default CHECKPOINT/{DEFAULT_NAME}")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an earlier eval result (never another file)")] = False,
    lengths: Annotated[
        str | None, typer.Option("--lengths", help="decoder LLMs: needle prompt lengths in tokens, e.g. 1024,2048")
    ] = None,
    depths: Annotated[
        str | None, typer.Option("--depths", help="decoder LLMs: needle depths, e.g. 0.1,0.5,0.9")
    ] = None,
) -> None:
    """Top-1/top-5 accuracy (classifiers on labeled data) and fidelity to the original; prints the JSON path last."""
    from tokcomp.checkpoint import read_state
    from tokcomp.evaluation import evaluate_checkpoint
    from tokcomp.evaluation.metrics import low_fidelity_warning
    from tokcomp.evaluation.runner import RESULT_KIND
    from tokcomp.fileio import check_output_file, write_json

    if read_state(checkpoint).input.modality == "audio":  # a clear error for a wrong folder before anything loads
        from tokcomp.evaluation import speech_eval  # Whisper: transcripts, WER / CER per language

        print(speech_eval.run(checkpoint, data, samples, batch_size, seed, fidelity, output, force))
        return
    output = check_output_file(output or checkpoint / DEFAULT_NAME, force=force, kind=RESULT_KIND)  # before the work
    from tokcomp.evaluation.decoder import is_decoder_checkpoint

    if is_decoder_checkpoint(checkpoint):  # long-prompt tasks: needle retrieval, continuation fidelity, cost
        from tokcomp.evaluation.decoder_command import eval_decoder

        return eval_decoder(checkpoint, output, data, samples, seed, fidelity, lengths, depths)
    result = evaluate_checkpoint(checkpoint, data, samples, batch_size, seed, fidelity)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result)
    console.print(result_table(result))
    for note in result["notes"]:
        console.print(f"[yellow]{note}", highlight=False)
    if warning := low_fidelity_warning(result["fidelity"]):
        warn(warning)
    print(output.resolve())


def result_table(result: dict) -> Table:
    """The eval JSON as a readable table: one row per metric, original vs compressed."""
    from tokcomp.evaluation import table

    out = Table(*table.HEADERS, title=table.title(result), caption=table.caption(result))
    for row in table.metric_rows(result):
        out.add_row(*row)
    return out
