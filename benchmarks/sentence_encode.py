"""`SentenceTransformer.encode` throughput, original vs compressed, on held-out sentences.

    python benchmarks/sentence_encode.py [--sentences 512] [--repeats 5] [--runs 3] [--onnx] [--learned]

MiniLM-L6 (`zoo:minilm-l6`) compiled with ToMe at -35% FLOPs (reference 128 tokens) is
loaded with `SentenceTransformer(out, trust_remote_code=True)`; the original with
`SentenceTransformer(zoo folder)`. Both encode the same held-out English sentences
(Python's reference prose, real-world lengths), dynamically padded in batches of 32 as
sentence-transformers does (it sorts by length first). Timed on 2 threads, batch
by batch: each batch is encoded by every model of a runtime in turn, in an order that
rotates, and a round is the whole corpus; the PyTorch models, then the ONNX Runtime ones. That
is repeated in `--runs` runs: eager timings on a shared machine move between runs (minutes
apart) more than between the rounds of a run, so the speed-up is taken over the rounds of all
runs, and each run's own is listed. The FLOPs ratio beside it is the corpus's: the sum over sentences
of each model's MACs at that sentence's own length. With `--onnx`, ONNX Runtime
(`tokcomp.runtime.OnnxSentenceEncoder`) on the compressed export and on an r = 0 export
(the original's graph) are timed in the same run. With `--learned`, ToMe with greedy matching on a
learned merge cost (`cost: learned`, calibrated on Debian Reference prose, `zoo:prose:en`, 800
drawn: the recipe of benchmarks/dynamic_padding.py) at the same counts is timed in the same run.

Writes benchmarks/results/sentence_encode.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tokcomp  # noqa: E402
from benchmarks.common import (  # noqa: E402
    bootstrap_mean,
    interleaved_throughput,
    load_average,
    machine,
    pooled_rounds,
    write_results,
)
from tokcomp.analysis.flops import model_macs  # noqa: E402
from tokcomp.reducers.schedule import tokens_after_layers  # noqa: E402
from tokcomp.surgery import find_adapter, token_blocks  # noqa: E402
from tokcomp.surgery.adapters.base import InputSpec  # noqa: E402
from tokcomp.zoo.samples import english_prose  # noqa: E402

CUT = "-35%"
BATCH = 32
LEARNED = {"type": "tome", "matching": "greedy", "merge": "norm_preserving", "cost": "learned"}
LEARNED_CALIBRATION = {"data": "zoo:prose:en", "samples": 800}


def held_out(count: int) -> list[str]:
    """Every other sentence of Python's reference prose: nothing a recipe calibrates on."""
    return english_prose()[::2][:count]


def length_sorted_batches(texts: list[str]) -> list[list[str]]:
    """The corpus in batches of BATCH, longest first, as SentenceTransformer.encode batches it (by
    character length): each batch is then one timed step, run by every model in turn."""
    ordered = sorted(texts, key=len, reverse=True)
    return [ordered[start : start + BATCH] for start in range(0, len(ordered), BATCH)]


def encode_steps(encoder, batches: list[list[str]]) -> list:
    """One `encode` call per batch: the steps of one timed round (benchmarks/common.py)."""
    return [functools.partial(encoder.encode, batch, batch_size=BATCH) for batch in batches]


def compile_pair(folder: Path) -> tuple[Path, Path]:
    recipe = {"model": "zoo:minilm-l6", "passes": [{"type": "tome", "target_flops": CUT}], "evaluation": False}
    compressed = tokcomp.compile(recipe, folder / "tome")
    original = tokcomp.compile({**recipe, "passes": [{"type": "tome", "r": 0}]}, folder / "r0")
    return compressed, original


def compile_learned(folder: Path) -> Path:
    recipe = {
        "model": "zoo:minilm-l6",
        "passes": [{**LEARNED, "target_flops": CUT}],
        "calibration": LEARNED_CALIBRATION,
        "evaluation": False,
    }
    return tokcomp.compile(recipe, folder / "learned")


def corpus_flops_ratio(model, tokenizer, texts: list[str], max_length: int) -> float:
    """Sum of the compressed model's MACs over sentences at their own (truncated) lengths / the original's
    (a learned merge cost's own MACs counted, as its budget counts them)."""
    reducers = [block.reducer for block in token_blocks(model)]
    dense = compressed = 0.0
    for text in texts:
        n = min(len(tokenizer(text)["input_ids"]), max_length)
        geometry = find_adapter(model).geometry(model, InputSpec("text", sequence_length=n))
        dense += model_macs(geometry, [n] * geometry.num_layers)
        compressed += model_macs(geometry, tokens_after_layers(n, reducers), reducers)
    return compressed / dense


def run(args) -> dict:
    from sentence_transformers import SentenceTransformer

    from tokcomp import zoo

    torch.set_num_threads(2)
    texts = held_out(args.sentences)
    with tempfile.TemporaryDirectory(prefix="tokcomp-st-bench-") as tmp:
        compressed_dir, r0_dir = compile_pair(Path(tmp))
        original = SentenceTransformer(str(zoo.pull("minilm-l6")), device="cpu")
        compressed = SentenceTransformer(str(compressed_dir), trust_remote_code=True, device="cpu")
        batches = length_sorted_batches(texts)
        runners = {
            "original": encode_steps(original, batches),
            "compressed": encode_steps(compressed, batches),
        }
        onnx_runners = {}
        if args.onnx:
            from tokcomp.export import export_checkpoint
            from tokcomp.runtime import OnnxSentenceEncoder

            for folder in (compressed_dir, r0_dir):
                export_checkpoint(folder, "onnx")
            onnx_original, onnx_compressed = OnnxSentenceEncoder(r0_dir, threads=2), OnnxSentenceEncoder(compressed_dir, threads=2)
            onnx_runners["onnxruntime original"] = encode_steps(onnx_original, batches)
            onnx_runners["onnxruntime compressed"] = encode_steps(onnx_compressed, batches)
        if args.learned:
            learned_dir = compile_learned(Path(tmp))
            calibration = json.loads((learned_dir / "report.json").read_text())["tome"]["merge_cost"]
            learned = SentenceTransformer(str(learned_dir), trust_remote_code=True, device="cpu")
            runners["learned cost"] = encode_steps(learned, batches)
        load_before = load_average()
        runs = []
        for _ in range(args.runs):
            # one runtime at a time: a runtime's idle threads spin for a while after each call, so alternating
            # PyTorch and ONNX Runtime batch by batch would time each on cores the other still holds
            speed = interleaved_throughput(runners, batch=len(texts), repeats=args.repeats, warmup=1)
            if onnx_runners:
                speed |= interleaved_throughput(onnx_runners, batch=len(texts), repeats=args.repeats, warmup=1)
            runs.append(speed | {"load_average": load_average()})
        speed = pooled_rounds(runs, len(texts))
        load_after = load_average()
        a = original.encode(texts, batch_size=BATCH, convert_to_tensor=True)
        b = compressed.encode(texts, batch_size=BATCH, convert_to_tensor=True)
        cosine = torch.nn.functional.cosine_similarity(a, b)
        learned_cosine = None
        if args.learned:
            c = learned.encode(texts, batch_size=BATCH, convert_to_tensor=True)
            learned_cosine = bootstrap_mean(torch.nn.functional.cosine_similarity(a, c))
            learned_ratio = corpus_flops_ratio(learned[0].model, learned[0].tokenizer, texts, learned.max_seq_length)
        ratio = corpus_flops_ratio(compressed[0].model, compressed[0].tokenizer, texts, compressed.max_seq_length)
    lengths = [min(len(original.tokenizer(t)["input_ids"]), original.max_seq_length) for t in texts]
    return {
        "model": "zoo:minilm-l6",
        "pass": {"type": "tome", "target_flops": CUT, "reference_tokens": 128},
        "data": {
            "source": "held-out English prose (tokcomp.zoo.samples.english_prose()[::2])",
            "sentences": len(texts),
            "tokens": {"mean": sum(lengths) / len(lengths), "min": min(lengths), "max": max(lengths)},
        },
        "batch_size": BATCH,
        "throughput": speed,
        "runs": [
            {"load_average": run["load_average"], "speedup": {name: speedup(run, name) for name in speed}}
            for run in runs
        ],
        "speedup": speed["compressed"]["items_per_s"] / speed["original"]["items_per_s"],
        "onnx_speedup": (
            speed["onnxruntime compressed"]["items_per_s"] / speed["onnxruntime original"]["items_per_s"]
            if args.onnx
            else None
        ),
        "learned": (
            {
                "pass": {**LEARNED, "target_flops": CUT},
                "calibration": LEARNED_CALIBRATION,
                "compile_report": calibration,
                "speedup": speed["learned cost"]["items_per_s"] / speed["original"]["items_per_s"],
                "cosine_to_original": learned_cosine,
                "flops_ratio": learned_ratio,
            }
            if args.learned
            else None
        ),
        "flops_ratio": ratio,
        "ideal_speedup": 1 / ratio,
        "cosine_to_original": bootstrap_mean(cosine),
        "load_average": {"before": load_before, "after": load_after},
        "machine": machine(),
    }


def speedup(speed: dict, name: str) -> float | None:
    """`name`'s speed-up over its runtime's original in one run (None for the originals)."""
    original = "onnxruntime original" if name.startswith("onnxruntime") else "original"
    return None if name == original else speed[original]["median_s"] / speed[name]["median_s"]


def markdown(result: dict) -> str:
    data, cos, runs = result["data"], result["cosine_to_original"], result["runs"]
    lines = [
        "# sentence-transformers encode: MiniLM-L6 original vs ToMe -35% (dynamic padding)",
        "",
        f"Data: {data['sentences']} {data['source']}, {data['tokens']['mean']:.1f} tokens on average "
        f"({data['tokens']['min']}-{data['tokens']['max']}), batches of {result['batch_size']}. "
        f"Timed in {len(runs)} runs, batch by batch (every model of a runtime encodes a batch in turn, the order "
        "rotating; in each run PyTorch's models, then ONNX Runtime's); speed-up = ratio of the medians over "
        f"all {result['throughput']['original']['repeats']} rounds over the corpus, "
        f"{result['machine']['threads']} threads; load average {result['load_average']['before']:.2f} before, "
        f"{', '.join(format(run['load_average'], '.2f') for run in runs)} after each run.",
        "",
        "| runtime | sentences/s | speed-up | per run | rounds (range) | FLOPs speed-up (corpus) | speed-up / FLOPs "
        "| >= 0.9 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    speed, ideal = result["throughput"], result["ideal_speedup"]
    for runtime, key in (("PyTorch (SentenceTransformer)", "speedup"), ("ONNX Runtime", "onnx_speedup")):
        if result.get(key) is None:
            continue
        prefix = "" if key == "speedup" else "onnxruntime "
        rate = f"{speed[prefix + 'original']['items_per_s']:.1f} -> {speed[prefix + 'compressed']['items_per_s']:.1f}"
        rounds = _rounds(speed, prefix + "original", prefix + "compressed")
        each = _per_run(runs, prefix + "compressed")
        share = _share(result[key], ideal)
        lines.append(f"| {runtime} | {rate} | {result[key]:.2f}x | {each} | {rounds} | {ideal:.2f}x | {share} |")
    learned = result.get("learned")
    if learned:
        rate = f"{speed['original']['items_per_s']:.1f} -> {speed['learned cost']['items_per_s']:.1f}"
        gain, own_ideal = learned["speedup"], 1 / learned["flops_ratio"]  # its budget counts the cost model
        label = "PyTorch, greedy matching on a learned cost"
        rounds, each = _rounds(speed, "original", "learned cost"), _per_run(runs, "learned cost")
        share = _share(gain, own_ideal)
        lines.append(f"| {label} | {rate} | {gain:.2f}x | {each} | {rounds} | {own_ideal:.2f}x | {share} |")
    lines += [
        "",
        f"Embedding cosine, compressed vs original: {cos['mean']:.4f} (95% CI {cos['ci95'][0]:.4f}-{cos['ci95'][1]:.4f}, "
        f"min {cos['min']:.4f}, {cos['samples']} sentences).",
        "",
    ]
    if learned:
        c, report = learned["cosine_to_original"], learned["compile_report"]
        lines[-1:-1] = [
            (
                f"With the learned merge cost (calibrated on {learned['calibration']['samples']} drawn from "
                f"{learned['calibration']['data']}): {c['mean']:.4f} (95% CI {c['ci95'][0]:.4f}-{c['ci95'][1]:.4f}, "
                f"min {c['min']:.4f}). Its compile measured merge costs for {report['measure_seconds']:.0f} s and "
                f"fitted them for {report['fit_seconds']:.0f} s ({report['calibration']['used']} sentences)."
            ),
            "",
        ]
    return "\n".join(lines)


def _rounds(speed: dict, original: str, compressed: str) -> str:
    """Range of the speed-up over the rounds (each round runs the corpus through every runner, batch by batch)."""
    ratios = [a / b for a, b in zip(speed[original]["seconds"], speed[compressed]["seconds"])]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def _per_run(runs: list[dict], name: str) -> str:
    """Each run's own speed-up (ratio of its medians), in run order."""
    return ", ".join(f"{run['speedup'][name]:.2f}x" for run in runs)


def _share(speedup: float, ideal: float) -> str:
    """The speed-up's share of the FLOPs speed-up, and whether it reaches 0.9 (a lower one is flagged; three
    decimals, so that a share just under the bar never reads as 0.90)."""
    share = speedup / ideal
    return f"{share:.3f} | {'yes' if share >= 0.9 else '**no**'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the corpus per run")
    parser.add_argument("--runs", type=int, default=3, help="timing runs, spread through the benchmark")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime exports")
    parser.add_argument("--learned", action="store_true", help="also time ToMe with a learned merge cost")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    result = run(args)
    write_results(args.results, "sentence_encode", result, markdown(result))


if __name__ == "__main__":
    main()
