"""Word error rate of the original zoo Whisper models on the zoo's evaluation clips (quality only, no timing).

    .venv/bin/python benchmarks/whisper_original.py                 # transformers, plus faster-whisper if installed
    .venv/bin/python benchmarks/whisper_original.py --limit 5       # 5 clips per Asterisk language (the committed table)

With --limit N each source keeps N of its evaluation clips (speech_clips' fixed, hash-based
choice).
Greedy decoding everywhere. zoo:whisper-tiny-en transcribes the English sources;
zoo:whisper-base all of them with the clip's language forced. When faster-whisper is
installed, the same CTranslate2 weights (kept in the zoo folder under ctranslate2/) are
run through it too, int8 and float32, greedy (beam 1, temperature 0, no timestamps, no
conditioning on previous text), on the same clips.

WER and CER are corpus rates over normalised text (tokcomp.evaluation.speech). The 95%
interval resamples clips (bootstrap_mean over per-clip word errors scaled by the clip
count over the total reference words, whose mean is the corpus WER), holding the total
reference length fixed.

Writes benchmarks/results/whisper_original.{json,md}; the JSON keeps every transcript.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKCOMP_QUIET", "1")

from benchmarks.common import bootstrap_mean, machine, write_results
from tokcomp.evaluation.speech import corpus_score, error_rates, transcribe
from tokcomp.fileio import kind_comment
from tokcomp.zoo import pull
from tokcomp.zoo.speech import CALIBRATION_SHARE, SOURCES, speech_clips

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ENGLISH = ("librivox", "commands", "asterisk-en")
MODELS = {"whisper-tiny-en": ENGLISH, "whisper-base": SOURCES}
BATCH = 8
RUNTIMES = ("transformers", "fw-int8", "fw-float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="at most this many clips per source")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    args = parser.parse_args()
    runtimes = [r for r in args.runtimes if r == "transformers" or _has_faster_whisper()]
    clips = {source: speech_clips(source, "evaluation", args.limit) for source in SOURCES}
    result = {
        "kind": "tokcomp-bench-whisper-original",
        "machine": machine(),
        "split": {"name": "evaluation", "calibration_share": CALIBRATION_SHARE},
        "limit": args.limit,
        "rows": [],
    }
    # Runtime by runtime (the reference runtime first), rewriting the results after every row,
    # so an interrupted run keeps what it measured.
    for runtime in runtimes:
        for name, sources in MODELS.items():
            run = speech_runner(pull(f"zoo:{name}"), runtime)
            for source in sources:
                print(f"{name} {runtime} {source}: {len(clips[source])} clips", file=sys.stderr, flush=True)
                result["rows"].append(_row(name, runtime, source, clips[source], run(clips[source])))
                write_results(RESULTS, "whisper_original", result, _markdown(result["rows"], args.limit))


def _has_faster_whisper() -> bool:
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        print("faster-whisper is not installed: its rows are left out", file=sys.stderr)
        return False
    return True


def speech_runner(folder: Path, runtime: str):
    """clips -> transcripts with the zoo folder's Whisper: transformers (batched), or faster-whisper (fw-int8 / fw-float32)."""
    if runtime == "transformers":
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        return lambda clips: transcribe(model, processor, clips, batch_size=BATCH)
    from faster_whisper import WhisperModel

    compute_type = runtime.removeprefix("fw-")
    model = WhisperModel(str(folder / "ctranslate2"), device="cpu", compute_type=compute_type)

    def run(clips):
        texts = []
        for clip in clips:
            language = clip.language if model.model.is_multilingual else None
            segments, _info = model.transcribe(
                clip.audio, language=language, task="transcribe", beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
            )  # fmt: skip
            texts.append("".join(segment.text for segment in segments).strip())
        return texts

    return run


def _row(model: str, runtime: str, source: str, clips, hypotheses) -> dict:
    references = [clip.transcript for clip in clips]
    languages = [clip.language for clip in clips]
    score, per_clip = error_rates(references, hypotheses, languages)
    scale = len(per_clip) / max(score.words, 1)
    spread = bootstrap_mean([s.word_errors * scale for s in per_clip])
    return {
        "model": model,
        "runtime": runtime,
        "source": source,
        "language": languages[0],
        **score.as_dict(),
        "wer_ci95": [round(x, 6) for x in spread["ci95"]],
        "clips_detail": [
            {"name": c.name, "reference": c.transcript, "hypothesis": h, "word_errors": s.word_errors, "words": s.words}
            for c, h, s in zip(clips, hypotheses, per_clip, strict=True)
        ],
    }


def _markdown(rows: list[dict], limit: int | None) -> str:
    lines = [
        kind_comment("tokcomp-bench-whisper-original").rstrip(),
        "",
        "# Original Whisper zoo models: error rates on the zoo's evaluation clips",
        "",
        "Greedy decoding, language forced to the clip's language (whisper-base). WER/CER in % over normalised text;",
        "95% interval: bootstrap over clips. Quality only, no timing."
        + (f" At most {limit} clips per source." if limit else ""),
        "",
        "| model | runtime | source | clips | words | WER % | WER 95% CI | CER % |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        ci = f"{100 * r['wer_ci95'][0]:.1f} – {100 * r['wer_ci95'][1]:.1f}"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['source']} | {r['clips']} | {r['words']} | "
            f"{100 * r['wer']:.2f} | {ci} | {100 * r['cer']:.2f} |"
        )
    # All English sources together, per model and runtime.
    lines += ["", "English sources together (librivox + commands + asterisk-en):", ""]
    lines += ["| model | runtime | clips | words | WER % | CER % |", "|---|---|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["model"], r["runtime"]) for r in rows):
        english = [r for r in rows if (r["model"], r["runtime"]) == key and r["source"] in ENGLISH]
        total = corpus_score([_clip_totals(r) for r in english])
        lines.append(
            f"| {key[0]} | {key[1]} | {sum(r['clips'] for r in english)} | {total.words} | "
            f"{100 * total.wer:.2f} | {100 * total.cer:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _clip_totals(row: dict):
    from tokcomp.evaluation.speech import ClipScore

    return ClipScore(row["word_errors"], row["words"], row["char_errors"], row["chars"])


if __name__ == "__main__":
    main()
