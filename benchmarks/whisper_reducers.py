"""Token reducers on Whisper's encoder at equal encoder FLOPs, against the speech baselines: WER per language.

    python benchmarks/whisper_reducers.py [--model zoo:whisper-base] [--budgets=-30%,-50%]
        [--sources librivox,commands,asterisk-en,asterisk-fr,asterisk-es,asterisk-ru] [--per-source 12]

Data: the evaluation split of tokcomp's zoo speech sources (tokcomp.zoo.speech; only the
learned-rate rows calibrate, on the disjoint calibration split): LibriVox readings and spoken
commands (pocketsphinx-testdata, English) and Asterisk's telephone prompts in English, French,
Spanish and Russian. `--per-source N` keeps N clips per source (a fixed spread by name hash). Greedy
decoding in each clip's own language (forced), at most MAX_NEW_TOKENS new tokens per clip.

Rows, at every encoder FLOPs cut (resolved by each pass at the 1,500-token window):
- reducers: adjacent_merge (A-ToMe, the default for audio), tome, token_transform;
- adjacent_merge and tome with learned per-block rates (`rates: learned`: searched at the target
  FLOPs by KL to the original's teacher-forced transcripts of the zoo's calibration clips, which are
  disjoint from the evaluation clips; `--learn-clips`, `--learn-evaluations`);
- uniform pooling inside the encoder at the adjacent-merge counts (same FLOPs, merges that ignore
  the content);
- uniform pooling of the encoder output to the same final token count (the encoder runs whole:
  FLOPs not cut; the decoder sees as many tokens as after the reducer);
and once: the window truncated to each clip's own length (whisper.cpp's audio_ctx; its FLOPs
depend on the clip: the mean is reported). Truncating to a fixed count cuts speech off and the
decoder then loops to its token limit, so it is left out.

Per source: WER against the reference transcripts, WER against the original model's transcripts,
clips whose transcript is unchanged, and the paired difference from the original's WER with a
95% bootstrap interval over clips (1,000 resamples, seeded). Normalisation: Whisper's English
normaliser for English, lower-case / punctuation / numerals-to-words for fr / es / ru
(tokcomp.evaluation.speech). Writes benchmarks/results/whisper_reducers.{json,md} (or --output).
No timing.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_results  # noqa: E402
from tokcomp.analysis.flops import model_macs  # noqa: E402
from tokcomp.analysis.speech_baselines import (  # noqa: E402
    audio_tokens,
    truncated_window,
    uniform_pooling,
    uniform_pooling_in_encoder,
)
from tokcomp.evaluation.speech import ClipScore, error_rates, transcribe  # noqa: E402
from tokcomp.pipeline import apply_passes  # noqa: E402
from tokcomp.surgery import find_adapter  # noqa: E402
from tokcomp.surgery.adapters.base import InputSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REDUCERS = ("adjacent_merge", "tome", "token_transform")
LEARNED = ("adjacent_merge", "tome")  # the reducers whose per-block rates are also learned
SOURCES = "librivox,commands,asterisk-en,asterisk-fr,asterisk-es,asterisk-ru"
BOOTSTRAP = 1000
MAX_NEW_TOKENS = 128  # the longest reference (a 30 s LibriVox reading) is under 100 tokens


def encoder_gmacs(model, tokens_per_layer: list, input_tokens: int) -> float:
    geometry = find_adapter(model).geometry(model, InputSpec("audio", sequence_length=input_tokens))
    return model_macs(geometry, tokens_per_layer) / 1e9


def wer_difference(base: list[ClipScore], other: list[ClipScore], seed: int = 0) -> dict:
    """Corpus WER(other) - WER(base) with a paired bootstrap 95% interval over clips."""
    base_errors = np.array([s.word_errors for s in base], dtype=float)
    other_errors = np.array([s.word_errors for s in other], dtype=float)
    words = np.array([s.words for s in base], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=(BOOTSTRAP, len(base)))
    totals = np.maximum(words[picks].sum(axis=1), 1)
    deltas = (other_errors[picks].sum(axis=1) - base_errors[picks].sum(axis=1)) / totals
    delta = (other_errors.sum() - base_errors.sum()) / max(words.sum(), 1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {"delta": round(float(delta), 4), "low": round(float(low), 4), "high": round(float(high), 4)}


class Scorer:
    """Transcribes every clip with a model and scores it per source against references and the original."""

    def __init__(self, processor, clips: dict[str, list], original):
        self.processor, self.clips, self.original = processor, clips, original
        self.originals: dict[str, list[str]] = {}
        self.base_scores: dict[str, list[ClipScore]] = {}
        for source, group in clips.items():
            self.originals[source] = transcribe(original, processor, group, max_new_tokens=MAX_NEW_TOKENS)
            self.base_scores[source] = error_rates([c.transcript for c in group], self.originals[source],
                                                   [c.language for c in group])[1]  # fmt: skip

    def row(self, method: str, budget: str, model, gmacs: float, dense: float, tokens: list) -> dict:
        sources = {}
        for source, group in self.clips.items():
            texts = self.originals[source] if model is self.original else transcribe(
                model, self.processor, group, max_new_tokens=MAX_NEW_TOKENS
            )
            languages = [c.language for c in group]
            reference, scores = error_rates([c.transcript for c in group], texts, languages)
            versus_original, _ = error_rates(self.originals[source], texts, languages)
            sources[source] = {
                "clips": len(group),
                "wer": round(reference.wer, 4),
                "cer": round(reference.cer, 4),
                "wer_vs_original": round(versus_original.wer, 4),
                "same_transcript": sum(a == b for a, b in zip(texts, self.originals[source], strict=True)),
                "wer_change": wer_difference(self.base_scores[source], scores),
                "transcripts": texts,
            }
        row = {"method": method, "budget": budget, "tokens_per_layer": tokens, "encoder_gmacs": round(gmacs, 4),
               "flops_ratio": round(gmacs / dense, 4), "sources": sources}  # fmt: skip
        print(f"{method} {budget}: " + ", ".join(f"{s} {v['wer']:.3f}" for s, v in sources.items()), flush=True)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:whisper-base")
    parser.add_argument("--budgets", default="-30%,-50%")
    parser.add_argument("--sources", default=SOURCES)
    parser.add_argument("--per-source", type=int, default=12, help="evaluation clips per source (fixed spread)")
    parser.add_argument("--reducers", default=",".join(REDUCERS), help="reducers at constant r ('' for none)")
    parser.add_argument("--learned", default=",".join(LEARNED), help="reducers with learned rates ('' for none)")
    parser.add_argument("--no-baselines", action="store_true", help="leave out the pooling and truncation rows")
    parser.add_argument("--learn-clips", type=int, default=16, help="calibration clips of the learned rates")
    parser.add_argument("--learn-evaluations", type=int, default=30, help="schedules each learned search scores")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "whisper_reducers"), help="path without suffix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from tokcomp.zoo import pull
    from tokcomp.zoo.speech import speech_clips

    started = time.perf_counter()
    folder = str(pull(args.model)) if args.model.startswith("zoo:") else args.model
    processor = WhisperProcessor.from_pretrained(folder)
    original = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    clips = {s: speech_clips(s, "evaluation", limit=args.per_source) for s in args.sources.split(",")}
    all_clips = [c for group in clips.values() for c in group]
    features = processor([c.audio for c in all_clips], sampling_rate=16000, return_tensors="pt").input_features
    window, layers = int(original.config.max_source_positions), original.config.encoder_layers
    dense = encoder_gmacs(original, [window] * layers, window)
    scorer = Scorer(processor, clips, original)
    rows = [scorer.row("original", "0%", original, dense, dense, [window] * layers)]

    for budget in args.budgets.split(","):
        adjacent = None
        for kind in filter(None, args.reducers.split(",")):
            model = copy.deepcopy(original)
            record = apply_passes(model, [{"type": kind, "target_flops": budget}])[0]
            tokens = record.metadata["tokens_per_layer"]
            adjacent = tokens if kind == "adjacent_merge" else adjacent
            rows.append(scorer.row(kind, budget, model, record.metadata["gmacs"], dense, tokens))
        for kind in filter(None, args.learned.split(",")):
            model = copy.deepcopy(original)
            search = {"clips": args.learn_clips, "evaluations": args.learn_evaluations}
            passes = [{"type": kind, "target_flops": budget, "rates": "learned", "search": search}]
            record = apply_passes(model, passes, processor=processor)[0]
            row = scorer.row(f"{kind}, learned rates", budget, model, record.metadata["gmacs"], dense,
                             record.metadata["tokens_per_layer"])  # fmt: skip
            report = record.metadata["report"]
            row["calibration"] = {key: report[key] for key in ("calibration", "kl", "kept", "search_seconds")}
            row["calibration"]["constant_r_kl"] = next(c["kl"] for c in report["candidates"] if c["kind"] == "constant r")
            rows.append(row)
        if args.no_baselines:
            continue
        if adjacent is None:  # the baselines run at adjacent merging's counts
            adjacent = apply_passes(copy.deepcopy(original), [{"type": "adjacent_merge", "target_flops": budget}])[0]
            adjacent = adjacent.metadata["tokens_per_layer"]
        final = adjacent[-1]
        rows.append(scorer.row("uniform pooling in the encoder", budget, uniform_pooling_in_encoder(original, adjacent),
                               encoder_gmacs(original, adjacent, window), dense, adjacent))  # fmt: skip
        rows.append(scorer.row(f"uniform pooling of the output to {final}", budget, uniform_pooling(original, final),
                               dense, dense, [window] * layers))  # fmt: skip

    if not args.no_baselines:
        lengths = audio_tokens(features).tolist()
        gmacs = float(np.mean([encoder_gmacs(original, [n] * layers, n) for n in lengths]))
        mean_tokens = [round(float(np.mean(lengths)), 1)] * layers
        rows.append(scorer.row("window truncated to each clip's length", "clip", truncated_window(original), gmacs,
                               dense, mean_tokens))  # fmt: skip

    result = {
        "model": args.model,
        "data": {s: {"clips": [c.name for c in g], "seconds": round(sum(c.seconds for c in g), 1),
                     "references": [c.transcript for c in g]} for s, g in clips.items()},  # fmt: skip
        "machine": machine(),
        "seconds": round(time.perf_counter() - started),
        "rows": rows,
    }
    output = Path(args.output)
    write_results(output.parent, output.stem, result, markdown(result))


def markdown(result: dict) -> str:
    sources = list(result["data"])
    counts = ", ".join(f"{s} {len(result['data'][s]['clips'])}" for s in sources)
    lines = [
        f"# Whisper encoder reduction: WER per source ({result['model']})",
        "",
        (
            f"Evaluation clips (never used in calibration; only the learned-rate rows calibrate, on the disjoint "
            f"calibration split): {counts}. Greedy, each "
            "clip's own language forced. Each cell: WER against the reference transcripts, then the change from "
            "the original model's WER with its paired bootstrap 95% interval over clips (WER points). Encoder "
            "FLOPs = convolutions + layers (MACs), relative to the original; data-dependent rows report means. "
            "Intervals span several points at these clip counts: read differences inside them as ties."
        ),
        *(["", result["note"] + "."] if "note" in result else []),
        "",
        "| method | budget | encoder FLOPs | " + " | ".join(sources) + " |",
        "|---|---|---|" + "---|" * len(sources),
    ]
    for r in result["rows"]:
        cells = []
        for s in sources:
            v = r["sources"][s]
            change = v["wer_change"]
            cell = f"{100 * v['wer']:.1f}%"
            if r["method"] != "original":
                cell += f" ({100 * change['delta']:+.1f} [{100 * change['low']:+.1f}, {100 * change['high']:+.1f}])"
            cells.append(cell)
        lines.append(f"| {r['method']} | {r['budget']} | {r['flops_ratio']:.3f} | " + " | ".join(cells) + " |")
    learned = [r for r in result["rows"] if "calibration" in r]
    if learned:
        data = learned[0]["calibration"]["calibration"]
        intro = (f"Learned rates: calibrated on {data['clips']} clips of {data['data']}; calibration KL of the "
                 "learned schedule vs the constant-r schedule (the search's first start):")  # fmt: skip
        lines += ["", intro, ""]
        for r in learned:
            c = r["calibration"]
            lines.append(f"- {r['method']} {r['budget']}: KL {c['kl']:.4f} vs {c['constant_r_kl']:.4f} "
                         f"(kept: {c['kept']}; search {c['search_seconds']:.0f} s)")  # fmt: skip
    lines += ["", "Tokens per encoder layer at the 30 s window:", ""]
    for r in result["rows"]:
        lines.append(f"- {r['method']} {r['budget']}: {' '.join(str(t) for t in r['tokens_per_layer'])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
