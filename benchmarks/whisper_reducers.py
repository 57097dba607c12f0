"""Token reducers on Whisper's encoder at equal encoder FLOPs, against the speech baselines. No timing.

    python benchmarks/whisper_reducers.py [--model ~/.cache/tokcomp/zoo/whisper-tiny-en]
        [--pocketsphinx /usr/share/pocketsphinx/test/data] [--budgets=-30%,-50%]

Data: the LibriVox reading (5 clips) and the card-name commands (5 clips) of Debian's
pocketsphinx-testdata (`apt-get download pocketsphinx-testdata && dpkg -x ...`; the folder
that holds librivox/ and cards/, or $TOKCOMP_TEST_POCKETSPHINX). Greedy decoding, batch of
all clips, at most 96 new tokens.

Rows, at every encoder FLOPs cut:
- reducers (`target_flops` resolved by the pass at the 1,500-token window): adjacent_merge,
  tome, token_transform, zero_tprune; adjacent_merge with a threshold (cosine 0.9, capped
  at the same budget: its FLOPs depend on the clip, the mean is reported);
- uniform pooling inside the encoder at the adjacent-merge counts (same FLOPs, merges
  that ignore the content);
- uniform pooling of the encoder output to the same final token count (the encoder runs
  whole: FLOPs not cut; the decoder sees as many tokens as after the reducer);
and once: the window truncated to each clip's own length (whisper.cpp's audio_ctx;
its FLOPs depend on the clip: mean reported), and to the reducer's final token count.

Columns: tokens per encoder layer at the window, encoder GMACs ratio, clips whose greedy
transcript equals the original model's, WER against the reference transcripts and against
the original's transcripts (Whisper's English normaliser on both sides; word edit distance).
Writes benchmarks/results/whisper_reducers.{json,md} (or --output).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import wave
from pathlib import Path

import numpy as np
import torch

from tokcomp.analysis.flops import model_macs
from tokcomp.analysis.speech_baselines import (
    audio_tokens,
    truncated_window,
    uniform_pooling,
    uniform_pooling_in_encoder,
)
from tokcomp.fileio import write_json
from tokcomp.pipeline import apply_passes
from tokcomp.surgery import find_adapter
from tokcomp.surgery.adapters.base import InputSpec

RESULTS = Path(__file__).parent / "results"
REDUCERS = [
    ("adjacent_merge", {}),
    ("adjacent_merge", {"threshold": 0.9}),
    ("tome", {}),
    ("token_transform", {}),
    ("zero_tprune", {}),
]


# ------------------------------------------------------------------ data and scoring


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getframerate() != 16000 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16 kHz 16-bit wav")
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        return audio.reshape(-1, w.getnchannels()).mean(axis=1)


def pocketsphinx_clips(root: Path) -> list[tuple[str, np.ndarray, str]]:
    """(name, audio, transcript) of the LibriVox and cards clips."""
    clips = []
    for folder, listing in (("librivox", "librivox/transcription"), ("cards", "cards/cards.transcription")):
        for line in (root / listing).read_text().splitlines():
            text, name = re.match(r"<s>(.*)</s> \((.*)\)", line).groups()
            clips.append((f"{folder}/{name}", read_wav(root / folder / f"{name}.wav"), text.strip()))
    return clips


def normalise(text: str) -> list[str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})(text).split()


def word_edits(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def wer(references: list[str], hypotheses: list[str]) -> float:
    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses, strict=True)]
    return sum(word_edits(r, h) for r, h in pairs) / max(1, sum(len(r) for r, _ in pairs))


# ------------------------------------------------------------------ runs


def transcribe(model, features, processor) -> list[str]:
    with torch.inference_mode():
        ids = model.generate(features, max_new_tokens=96)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


def encoder_gmacs(model, tokens_per_layer: list[int], input_tokens: int) -> float:
    adapter = find_adapter(model)
    geometry = adapter.geometry(model, InputSpec("audio", sequence_length=input_tokens))
    return model_macs(geometry, tokens_per_layer) / 1e9


def row(name, budget, model, features, processor, reference, originals, gmacs, dense_gmacs, tokens):
    texts = transcribe(model, features, processor)
    return {
        "method": name,
        "budget": budget,
        "tokens_per_layer": tokens,
        "encoder_gmacs": round(gmacs, 4),
        "flops_ratio": round(gmacs / dense_gmacs, 4),
        "same_transcript": sum(a == b for a, b in zip(texts, originals, strict=True)),
        "wer_reference": round(wer(reference, texts), 4),
        "wer_vs_original": round(wer(originals, texts), 4),
        "transcripts": texts,
    }


def threshold_gmacs(model, features) -> tuple[float, list[float]]:
    """Mean encoder GMACs and mean tokens per layer of a data-dependent (threshold) reduction, per clip."""
    blocks = [b for b in model.modules() if type(b).__name__ == "WhisperTokenBlock"]
    counts = []
    hooks = [b.register_forward_hook(lambda m, i, o, c=counts: c.append(o.shape[1])) for b in blocks]
    per_clip, tokens = [], []
    try:
        for clip in features:
            counts.clear()
            with torch.inference_mode():
                model.model.encoder(clip[None])
            per_clip.append(encoder_gmacs(model, counts, model.config.max_source_positions))
            tokens.append(list(counts))
    finally:
        for hook in hooks:
            hook.remove()
    return float(np.mean(per_clip)), [round(float(v), 1) for v in np.mean(tokens, axis=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache/tokcomp/zoo/whisper-tiny-en"))
    parser.add_argument(
        "--pocketsphinx",
        default=os.environ.get("TOKCOMP_TEST_POCKETSPHINX", "/usr/share/pocketsphinx/test/data"),
    )
    parser.add_argument("--budgets", default="-30%,-50%")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "whisper_reducers"), help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(args.model)
    original = WhisperForConditionalGeneration.from_pretrained(args.model).eval()
    clips = pocketsphinx_clips(Path(args.pocketsphinx))
    features = processor([a for _, a, _ in clips], sampling_rate=16000, return_tensors="pt").input_features
    reference = [t for _, _, t in clips]
    window = int(original.config.max_source_positions)
    layers = original.config.encoder_layers
    dense = encoder_gmacs(original, [window] * layers, window)
    originals = transcribe(original, features, processor)
    rows = [row("original", "0%", original, features, processor, reference, originals, dense, dense, [window] * layers)]
    print(rows[-1]["method"], rows[-1]["wer_reference"], flush=True)

    for budget in args.budgets.split(","):
        adjacent_counts = None
        for kind, extra in REDUCERS:
            model = copy.deepcopy(original)
            record = apply_passes(model, [{"type": kind, "target_flops": budget, **extra}])[0]
            tokens = record.metadata["tokens_per_layer"]
            name = kind + (f" (threshold {extra['threshold']})" if extra else "")
            gmacs = record.metadata["gmacs"]
            if extra:
                gmacs, tokens = threshold_gmacs(model, features)
            elif kind == "adjacent_merge":
                adjacent_counts = tokens
            rows.append(row(name, budget, model, features, processor, reference, originals, gmacs, dense, tokens))
            print(name, budget, rows[-1]["flops_ratio"], rows[-1]["wer_reference"], flush=True)
        model = uniform_pooling_in_encoder(original, adjacent_counts)
        gmacs = encoder_gmacs(original, adjacent_counts, window)
        name = "uniform pooling in the encoder"
        rows.append(row(name, budget, model, features, processor, reference, originals, gmacs, dense, adjacent_counts))
        final = adjacent_counts[-1]
        model = uniform_pooling(original, final)
        name = f"uniform pooling of the output to {final}"
        rows.append(
            row(name, budget, model, features, processor, reference, originals, dense, dense, [window] * layers)
        )
        model = truncated_window(original, audio_ctx=final)
        gmacs = encoder_gmacs(original, [final] * layers, final)
        name = f"window truncated to {final} positions"
        rows.append(row(name, budget, model, features, processor, reference, originals, gmacs, dense, [final] * layers))
        print("baselines", budget, flush=True)

    lengths = audio_tokens(features).tolist()
    gmacs = float(np.mean([encoder_gmacs(original, [n] * layers, n) for n in lengths]))
    model = truncated_window(original)
    mean_tokens = [round(float(np.mean(lengths)), 1)] * layers
    name = "window truncated to each clip's length"
    rows.append(row(name, "clip", model, features, processor, reference, originals, gmacs, dense, mean_tokens))

    result = {
        "model": args.model,
        "data": {"clips": [n for n, _, _ in clips], "seconds": [round(len(a) / 16000, 2) for _, a, _ in clips]},
        "reference": reference,
        "rows": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output.with_suffix(".json"), result)
    (output.with_suffix(".md")).write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    clips = len(result["reference"])
    lines = [
        (
            f"Whisper encoder reduction on {clips} pocketsphinx-testdata clips ({result['model'].split('/')[-1]}; "
            "greedy; WER with Whisper's English normaliser). Encoder FLOPs = convolutions + layers (MACs); "
            "data-dependent rows (threshold, per-clip truncation) report means over the clips."
        ),
        "",
        "| method | budget | tokens per layer | encoder FLOPs | same transcript | WER vs reference | WER vs original |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        tokens = " ".join(str(t) for t in r["tokens_per_layer"])
        lines.append(
            f"| {r['method']} | {r['budget']} | {tokens} | {r['flops_ratio']:.3f} | {r['same_transcript']}/{clips} "
            f"| {100 * r['wer_reference']:.1f}% | {100 * r['wer_vs_original']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
