"""`tokcomp eval` on a Whisper checkpoint: transcripts, WER / CER per language, encoder FLOPs and tokens.

Every clip is transcribed greedily by the compressed model and by the original (clips over
30 s in overlapping windows, tokcomp.evaluation.long_form). Scores, per language and over
all clips:

    compressed_vs_reference   the compressed model against the reference transcripts
    original_vs_reference     the original against the same references (the floor to compare with)
    compressed_vs_original    the compressed model against the original's own transcripts:
                              what the compression changed, whatever the references say

The original is the checkpoint's base model with the saved weights and no pass replayed;
when a pass changed the weights (vocab_trim) it is the base model as the recipe named it.
A result is flagged (`flagged`, and a warning) when the compressed model's WER against the
original's transcripts exceeds MAX_WER_VS_ORIGINAL on all clips or on one language.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from tokcomp.data.audio import SpeechClip, load_speech
from tokcomp.errors import TokcompError
from tokcomp.evaluation.long_form import OVERLAP_SECONDS, WINDOW_SECONDS, transcribe_long, windows
from tokcomp.evaluation.speech import error_rates

RESULT_KIND = "tokcomp-eval"
DEFAULT_DATA = "zoo:librivox"
MAX_WER_VS_ORIGINAL = 0.05  # more changed words than this is a poor compression, worth a warning
WEIGHT_CHANGING_PASSES = {"vocab_trim"}  # the saved weights are no longer the original's
_SOURCES_HINT = (
    "use zoo:<source> (librivox, commands, asterisk-en, asterisk-fr, asterisk-es, asterisk-ru; + joins several, "
    "e.g. zoo:librivox+commands), zoo:<source>-long (the recordings over 30 s), an audio folder or a .tsv/.jsonl manifest"
)


def load_speech_data(
    data: str | None, samples: int | None = None, seed: int = 0, split: str = "evaluation"
) -> tuple[str, list[SpeechClip]]:
    """(name, clips) of a speech source; `samples` keeps a seeded subset of that size, in source order.
    Zoo sources give their `split` ("evaluation", or "calibration" for passes that learn)."""
    from tokcomp.zoo.speech import SOURCES, long_speech_clips, speech_clips

    data = data or DEFAULT_DATA
    if data.startswith("zoo:"):
        clips: list[SpeechClip] = []
        for part in data.removeprefix("zoo:").split("+"):
            if part in SOURCES:
                clips += speech_clips(part, split)
            elif part.endswith("-long") and part.removesuffix("-long") in SOURCES and split == "calibration":
                raise TokcompError(
                    f"zoo:{part} is held out for long-form evaluation and cannot calibrate",
                    hint="calibrate on zoo:asterisk-en (or another source's calibration split) or your own clips",
                )
            elif part.endswith("-long") and part.removesuffix("-long") in SOURCES:
                clips += long_speech_clips(part.removesuffix("-long"))
            else:
                raise TokcompError(f"unknown speech data zoo:{part}", hint=_SOURCES_HINT)
    else:
        clips = load_speech(data)
    if not clips:
        which = f" in its {split} split" if data.startswith("zoo:") else ""
        raise TokcompError(f"speech data {data} holds no clips{which}", hint=_SOURCES_HINT)
    if samples is not None and samples < len(clips):
        chosen = sorted(random.Random(seed).sample(range(len(clips)), samples))
        clips = [clips[i] for i in chosen]
    return data, clips


def evaluate_speech_checkpoint(
    path: str | Path,
    data: str | None = None,
    samples: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    fidelity: bool = True,
) -> dict[str, Any]:
    """Everything `tokcomp eval` writes for a speech checkpoint (module docstring)."""
    from tokcomp.checkpoint import open_checkpoint
    from tokcomp.progress import step

    started = time.perf_counter()
    path = Path(path)
    with step(f"loading {path}"):
        checkpoint = open_checkpoint(path)
        compressed, state = checkpoint.model.eval(), checkpoint.state
        processor = _processor(path)
        original, original_processor, original_from = _original(path, state) if fidelity else (None, None, None)
    with step(f"reading {data or DEFAULT_DATA}"):
        data, clips = load_speech_data(data, samples, seed)
    with step(f"transcribing {len(clips)} clips with the compressed model"):
        hypotheses = transcribe_long(compressed, processor, clips, batch_size=batch_size)
    references = None
    if original is not None:
        with step(f"transcribing {len(clips)} clips with the original model"):
            references = transcribe_long(original, original_processor, clips, batch_size=batch_size)
    scores = score_transcripts(clips, hypotheses, references)
    notes = [] if original is not None else ["comparison with the original skipped (--no-fidelity)"]
    if not any(c.transcript for c in clips):
        notes.append("no reference transcripts: WER / CER against references skipped")
    flagged = _flag(scores)
    for item in flagged:
        notes.append(f"poor result: {item}")
    return {
        "kind": RESULT_KIND,
        "task": "speech-recognition",
        "checkpoint": str(path.resolve()),
        "model": state.base.source,
        "passes": [p.name for p in state.passes],
        "data": data,
        "samples": len(clips),
        "seed": seed,
        "original": original_from,
        "long_form": {"window_seconds": WINDOW_SECONDS, "overlap_seconds": OVERLAP_SECONDS},
        **scores,
        "encoder": encoder_cost(compressed, state, clips),
        "max_wer_vs_original": MAX_WER_VS_ORIGINAL,
        "flagged": flagged,
        "fidelity": None,  # the output-cosine fidelity of feature models; speech is scored by its transcripts
        "accuracy": None,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def score_transcripts(clips: list[SpeechClip], hypotheses: list[str], originals: list[str] | None) -> dict[str, Any]:
    """{"overall": scores, "languages": {code: scores}, "clips": [per clip]} (module docstring)."""
    groups: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        groups.setdefault(clip.language or "unknown", []).append(index)
    out: dict[str, Any] = {"overall": _scores(clips, hypotheses, originals, range(len(clips)))}
    out["languages"] = {lang: _scores(clips, hypotheses, originals, rows) for lang, rows in sorted(groups.items())}
    out["clips"] = [
        {
            "name": clip.name,
            "language": clip.language,
            "seconds": round(clip.seconds, 2),
            "reference": clip.transcript,
            "original": originals[i] if originals is not None else None,
            "compressed": hypotheses[i],
        }
        for i, clip in enumerate(clips)
    ]
    return out


def _scores(clips, hypotheses, originals, rows) -> dict[str, Any]:
    rows = list(rows)
    labeled = [i for i in rows if clips[i].transcript]
    result: dict[str, Any] = {"clips": len(rows), "seconds": round(sum(clips[i].seconds for i in rows), 2)}

    def rate(refs: list[int], ref_of, hyp_of) -> dict[str, Any] | None:
        if not refs:
            return None
        score, _ = error_rates([ref_of(i) for i in refs], [hyp_of(i) for i in refs], [clips[i].language for i in refs])
        return score.as_dict()

    result["compressed_vs_reference"] = rate(labeled, lambda i: clips[i].transcript, lambda i: hypotheses[i])
    if originals is not None:
        result["original_vs_reference"] = rate(labeled, lambda i: clips[i].transcript, lambda i: originals[i])
        result["compressed_vs_original"] = rate(rows, lambda i: originals[i], lambda i: hypotheses[i])
        result["identical_transcripts"] = sum(hypotheses[i] == originals[i] for i in rows)
    return result


def _flag(scores: dict[str, Any]) -> list[str]:
    flagged = []
    groups = {"all clips": scores["overall"], **{f"language {k}": v for k, v in scores["languages"].items()}}
    for name, group in groups.items():
        changed = group.get("compressed_vs_original")
        if changed and changed["wer"] > MAX_WER_VS_ORIGINAL:
            flagged.append(
                f"{name}: WER against the original's transcripts {100 * changed['wer']:.1f}% "
                f"> {100 * MAX_WER_VS_ORIGINAL:.0f}%"
            )
    return flagged


def encoder_cost(model, state, clips: list[SpeechClip]) -> dict[str, Any]:
    """Encoder MACs per 30 s window (original and compressed), windows run, and tokens after every layer."""
    from tokcomp.analysis.flops import gmacs, model_macs
    from tokcomp.surgery import find_adapter
    from tokcomp.surgery.adapters.base import InputSpec

    geometry = find_adapter(model).geometry(model, InputSpec("audio", sequence_length=state.input.sequence_length))
    dense = [geometry.input_tokens] * geometry.num_layers
    reduced = list(state.tokens_per_layer or dense)
    per_window = {"original": gmacs(model_macs(geometry, dense)), "compressed": gmacs(model_macs(geometry, reduced))}
    count = sum(len(windows(c.seconds)) for c in clips)
    return {
        "unit": "GMACs",
        "per_window": {k: round(v, 6) for k, v in per_window.items()},
        "ratio": per_window["compressed"] / per_window["original"],
        "windows": count,
        "total": {k: round(v * count, 3) for k, v in per_window.items()},
        "tokens_per_layer": {"input": geometry.input_tokens, "original": dense, "compressed": reduced},
    }


def _processor(path: Path):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise TokcompError(
            f"{path} has no readable speech processor: {str(exc).splitlines()[0]}",
            hint="re-run tokcomp compile; it saves the feature extractor and tokenizer beside the weights",
        ) from None


def _original(path: Path, state):
    """(model, processor, where it came from): see the module docstring."""
    from tokcomp.evaluation.models import open_original

    if not WEIGHT_CHANGING_PASSES & {p.name for p in state.passes}:
        return open_original(path, state).eval(), _processor(path), "the checkpoint's weights, no pass replayed"
    from tokcomp.sources import load_model

    loaded = load_model(state.base.source)
    return loaded.model.eval(), loaded.processor, state.base.source


def run(checkpoint: Path, data, samples, batch_size, seed, fidelity, output: Path | None, force: bool) -> Path:
    """`tokcomp eval` for a speech checkpoint: evaluate, write the JSON, print the table and warnings."""
    from tokcomp.commands.eval import result_table  # the rows of tokcomp.evaluation.table, as for every eval
    from tokcomp.fileio import check_output_file, write_json
    from tokcomp.progress import console, warn

    output = check_output_file(output or checkpoint / "eval.json", force=force, kind=RESULT_KIND)
    result = evaluate_speech_checkpoint(checkpoint, data, samples, batch_size, seed, fidelity)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result)
    console.print(result_table(result))
    for note in result["notes"]:
        if not note.startswith("poor result"):
            console.print(f"[yellow]{note}", highlight=False)
    for item in result["flagged"]:
        warn(f"poor result: {item} (use a smaller budget, or check the transcripts in {output.name})")
    return output.resolve()
