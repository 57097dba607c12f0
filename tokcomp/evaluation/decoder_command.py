"""`tokcomp eval` on a decoder LLM checkpoint: needle retrieval, continuation fidelity and cost, table and JSON."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tokcomp.progress import console, warn


def parse_list(text: str | None, kind: type, option: str) -> list | None:
    """ "1024,2048" -> [1024, 2048]; None stays None."""
    from tokcomp.evaluation.decoder import DecoderEvalError

    if text is None:
        return None
    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        values = []
    if not values:
        raise DecoderEvalError(
            f"{option} {text!r} is not a comma-separated list of numbers", hint=f"e.g. {option} 1024,2048"
        )
    return values


def eval_decoder(
    checkpoint: Path,
    output: Path,
    data: str | None,
    samples: int | None,
    seed: int,
    fidelity: bool,
    lengths: str | None,
    depths: str | None,
) -> None:
    from tokcomp.evaluation.decoder import DecoderEvalConfig, DecoderEvalError, evaluate_decoder_checkpoint, table_rows
    from tokcomp.fileio import write_json

    if data is not None:
        raise DecoderEvalError(
            f"--data {data}: decoder checkpoints are scored on built-in long-prompt tasks (held-out zoo:prose)",
            hint="drop --data; choose sizes with --lengths, --depths and --samples",
        )
    if not fidelity:
        raise DecoderEvalError(
            "--no-fidelity: the decoder evaluation scores the compressed model against its original",
            hint="drop --no-fidelity",
        )
    config = DecoderEvalConfig(seed=seed)
    if (values := parse_list(lengths, int, "--lengths")) is not None:
        config.lengths = values
        config.fidelity_length = min(values)
    if (values := parse_list(depths, float, "--depths")) is not None:
        config.depths = values
    if samples is not None:
        config.samples = config.fidelity_samples = samples
    result = evaluate_decoder_checkpoint(checkpoint, config, progress=lambda m: console.print(f"[dim]{m}"))
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result)
    table = Table("metric", "original", "compressed", title=f"{result['model']}: {', '.join(result['passes'])}")
    for metric, original, compressed, flagged in table_rows(result):
        style = "bold red" if flagged else None
        table.add_row(metric, original, compressed + (" (worse)" if flagged else ""), style=style)
    console.print(table)
    if cost := result.get("cost"):
        load = cost["machine_before"]["load_average_1_5_15"]
        console.print(
            f"[dim]timings: medians of {cost['original']['repeats']} interleaved repeats; load average {load}"
        )
    for flag in result["flags"]:
        warn(flag)
    print(output.resolve())
