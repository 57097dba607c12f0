"""End-to-end transcription time of real clips: Whisper original vs compressed (transformers) vs faster-whisper.

    python benchmarks/whisper_speed.py [--model whisper-base] [--pass '{"type": "tome", "target_flops": "-50%"}']
        [--sources librivox,commands,asterisk-en] [--per-source 6] [--repeats 3] [--threads 2]
        [--no-onnx] [--no-compile] [--checkpoint DIR]

Clips: the English evaluation clips of the zoo speech sources (`--per-source` each, the fixed spread
by name hash; never used in calibration). Every runner transcribes all of them greedily (English
forced), in one interleaved run: original and compressed transformers models (eager, float32,
batches of 8 as `tokcomp eval` runs them), and faster-whisper on the same CTranslate2 weights, int8
and float32 (one clip at a time, beam 1, no timestamps, no VAD: the library's own loop), and
(unless --no-onnx) the compressed model's ONNX export on ONNX Runtime (`tokcomp export --format
onnx`: encoder + cached decoder, tokcomp.runtime.transcribe_onnx, batches of 8; the checkpoint is
compiled and exported into --checkpoint first, minutes for whisper-base), and (unless --no-compile)
the compressed model with its encoder under torch.compile (the decoder stays eager; compiling
happens in the warm-up, minutes on CPU, once per batch size). Reported:
the median over `--repeats` of each runner's total seconds (one warm-up pass each first), the
encoder alone (original vs compressed in PyTorch, and the compressed ONNX encoder; one batch of
every clip), WER against the references and against the original transformers model's
transcripts, and the load average before / after.
Writes benchmarks/results/whisper_speed.{json,md} (or --output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_results  # noqa: E402
from benchmarks.whisper_original import BATCH, speech_runner  # noqa: E402
from benchmarks.whisper_reducers import encoder_gmacs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# The best -50% row of benchmarks/whisper_learned_rates.md (WER unchanged on every source), as it was searched there.
DEFAULT_PASS = {"type": "adjacent_merge", "target_flops": "-50%", "rates": "learned", "search": {"clips": 8, "evaluations": 16}}


def timed(run, *args) -> float:
    started = time.perf_counter()
    run(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-base", help="a zoo Whisper (its folder holds ctranslate2/)")
    parser.add_argument("--pass", dest="spec", default=json.dumps(DEFAULT_PASS))
    parser.add_argument("--sources", default="librivox,commands,asterisk-en")
    parser.add_argument("--per-source", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "whisper_speed"), help="path without suffix")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX Runtime runner")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile runner")
    parser.add_argument(
        "--checkpoint", help="folder of the compiled + exported checkpoint, reused if exported (default: a temporary one)"
    )
    args = parser.parse_args()

    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    import tokcomp
    from tokcomp.checkpoint import read_state
    from tokcomp.evaluation.speech import error_rates, transcribe
    from tokcomp.runtime.onnx_whisper import OnnxWhisper
    from tokcomp.zoo import pull
    from tokcomp.zoo.speech import speech_clips

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = pull(f"zoo:{args.model}")
    clips = [c for s in args.sources.split(",") for c in speech_clips(s, "evaluation", limit=args.per_source)]
    processor = AutoProcessor.from_pretrained(folder)
    original = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    spec = json.loads(args.spec)
    # Compiled once (a learned-rate pass searches once), then loaded as users load it.
    scratch = tempfile.TemporaryDirectory(prefix="whisper-speed-")
    checkpoint = compile_compressed(folder, spec, Path(args.checkpoint or Path(scratch.name) / "checkpoint"), args.onnx)
    compressed = tokcomp.load(checkpoint).eval()
    metadata = read_state(checkpoint).passes[0].metadata
    window, layers = int(original.config.max_source_positions), original.config.encoder_layers
    dense_gmacs = encoder_gmacs(original, [window] * layers, window)

    def hf(model):
        return lambda items: transcribe(model, processor, items, language="en", batch_size=BATCH)

    runners = {
        "transformers original": hf(original),
        f"transformers {describe(spec)}": hf(compressed),
    }
    for compute in ("int8", "float32"):
        runners[f"faster-whisper {compute}"] = speech_runner(folder, f"fw-{compute}")

    features = processor.feature_extractor([c.audio for c in clips], sampling_rate=16000, return_tensors="pt")
    encoders = {"original": original.model.encoder, "compressed": compressed.model.encoder}
    if args.compile:
        compiled = tokcomp.load(checkpoint).eval()
        compiled.model.encoder = torch.compile(compiled.model.encoder)  # generate() reaches it via get_encoder()
        runners[f"transformers {describe(spec)}, torch.compile encoder"] = hf(compiled)
        encoders["compressed torch.compile"] = compiled.model.encoder
    if args.onnx:
        whisper = OnnxWhisper(checkpoint, threads=args.threads)
        runners[f"onnxruntime {describe(spec)}"] = onnx_runner(whisper, processor)
        encoders["compressed onnxruntime"] = lambda x: whisper.encode(x.numpy())

    def encode(encoder):
        with torch.inference_mode():
            encoder(features.input_features)

    before = machine()
    texts = {name: run(clips) for name, run in runners.items()}  # warm-up, and the transcripts scored
    for encoder in encoders.values():
        encode(encoder)
    seconds = {name: [] for name in runners}
    encoder_seconds = {name: [] for name in encoders}
    for repeat in range(args.repeats):
        for name, run in runners.items():
            seconds[name].append(timed(run, clips))
        for name, encoder in encoders.items():
            encoder_seconds[name].append(timed(encode, encoder))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), flush=True)
    after = machine()

    references = [c.transcript for c in clips]
    baseline = texts["transformers original"]
    rows = []
    for name in runners:
        vs_reference, _ = error_rates(references, texts[name], "en")
        vs_original, _ = error_rates(baseline, texts[name], "en")
        rows.append({
            "runner": name, "seconds": round(statistics.median(seconds[name]), 3), "all_seconds": seconds[name],
            "wer": round(vs_reference.wer, 4), "wer_vs_original": round(vs_original.wer, 4), "transcripts": texts[name],
        })  # fmt: skip
    encoder = {n: round(statistics.median(s), 3) for n, s in encoder_seconds.items()}
    result = {
        "model": f"zoo:{args.model}", "pass": spec, "flops_ratio": round(metadata["gmacs"] / dense_gmacs, 4),
        "tokens_per_layer": metadata.get("tokens_per_layer"), "gmacs": metadata.get("gmacs"),
        "clips": [c.name for c in clips], "audio_seconds": round(sum(c.seconds for c in clips), 1),
        "repeats": args.repeats, "threads": args.threads, "batch": BATCH, "rows": rows,
        "encoder_seconds": encoder, "machine_before": before, "machine_after": after,
        "seconds": round(time.perf_counter() - started),
    }  # fmt: skip
    output = Path(args.output)
    write_results(output.parent, output.stem, result, markdown(result))


def describe(spec: dict) -> str:
    """A runner's name for a pass: type, budget, and whether its rates are learned."""
    learned = ", learned rates" if spec.get("rates") == "learned" else ""
    return f"{spec['type']} {spec.get('target_flops', '')}".strip() + learned


def compile_compressed(folder: Path, spec: dict, checkpoint: Path, onnx: bool) -> Path:
    """The zoo model compiled with `spec` into `checkpoint`, exported as ONNX if asked (reused when already there)."""
    import tokcomp
    from tokcomp.export import export_checkpoint

    if not (checkpoint / "tokcomp.json").is_file():
        tokcomp.compile({"model": str(folder), "passes": [spec], "evaluation": False}, checkpoint, force=True)
    if onnx and not (checkpoint / "decoder_with_past_model.onnx").is_file():
        export_checkpoint(checkpoint, "onnx")
    return checkpoint


def onnx_runner(whisper, processor):
    """clips -> transcripts with the ONNX export, English forced, batches of BATCH (as the transformers runners)."""
    multilingual = bool(whisper.generation.get("lang_to_id"))
    options = {"language": "en", "task": "transcribe"} if multilingual else {}

    def run(clips):
        texts = []
        for start in range(0, len(clips), BATCH):
            audio = [c.audio for c in clips[start : start + BATCH]]
            x = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
            ids = whisper.generate(x, **options)
            texts += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
        return texts

    return run


def markdown(result: dict) -> str:
    rows = result["rows"]
    base = rows[0]["seconds"]
    fw_int8 = next(r["seconds"] for r in rows if r["runner"] == "faster-whisper int8")
    enc = result["encoder_seconds"]
    lines = [
        f"# Whisper transcription time: {result['model']}, original vs compressed vs faster-whisper",
        "",
        (
            f"{len(result['clips'])} English evaluation clips ({result['audio_seconds']} s of audio), greedy, CPU, "
            f"{result['threads']} threads; median of {result['repeats']} interleaved repeats after a warm-up. "
            f"Load average before / after: {result['machine_before']['load_average']} / "
            f"{result['machine_after']['load_average']}. Compressed: `{json.dumps(result['pass'])}` "
            f"({result['flops_ratio']:.3f} of the original's encoder FLOPs at the 30 s window: ideal encoder speed-up "
            f"{1 / result['flops_ratio']:.2f}x)."
        ),
        "",
        "| runner | total seconds | vs transformers original | vs faster-whisper int8 | WER | WER vs original |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runner']} | {r['seconds']:.2f} | {base / r['seconds']:.2f}x | {fw_int8 / r['seconds']:.2f}x | "
            f"{100 * r['wer']:.1f}% | {100 * r['wer_vs_original']:.1f}% |"
        )
    others = "".join(
        f"; {name} {enc[name]:.2f} s ({enc['original'] / enc[name]:.2f}x)"
        for name in ("compressed torch.compile", "compressed onnxruntime")
        if name in enc
    )
    lines += [
        "",
        f"Encoder alone, one batch of every clip: original {enc['original']:.2f} s, compressed "
        f"{enc['compressed']:.2f} s ({enc['original'] / enc['compressed']:.2f}x){others}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
