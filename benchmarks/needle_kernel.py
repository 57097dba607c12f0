"""How wide to pool the last token's attention: needle answers by kernel, on the calibration split.

    python benchmarks/needle_kernel.py [--kernels 1,7,15] [--keeps 0.1,0.25] [--lengths 1024,2048]

FastV (after layer 6, gemma-3-270m's first full-attention layer; sink 4, question 32) at each
kernel and kept share, on needle prompts whose haystack is the *calibration* split of zoo:prose
(seed 1, 2 prompts per length and depth 0.1 / 0.5 / 0.9): the setting the default kernel was
chosen on, so the needle benchmark (benchmarks/decoder_kvpress.py, evaluation split) stays
unseen. Deterministic; no timing. Writes benchmarks/results/needle_kernel.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine, write_results  # noqa: E402

MODEL = "zoo:gemma-3-270m"
SPEC = {"type": "fastv", "layer": 6, "sink": 4, "question": 32}
DEPTHS = (0.1, 0.5, 0.9)
SEED = 1  # the benchmark's needles use seed 0 on the evaluation split


def run(args) -> dict:
    import transformers

    from tokcomp.evaluation import decoder, needle
    from tokcomp.pipeline import apply_passes
    from tokcomp.zoo import pull

    folder = str(pull(MODEL))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    original = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lengths = [int(x) for x in args.lengths.split(",")]
    samples = needle.build_samples(
        tokenizer, lengths, DEPTHS, args.samples, 1, SEED, sentences=needle.prose_sentences("calib")
    )
    rows = []
    for keep in [float(x) for x in args.keeps.split(",")]:
        for kernel in [int(x) for x in args.kernels.split(",")]:
            model = copy.deepcopy(original)
            apply_passes(model, [{**SPEC, "keep": keep, "kernel": kernel}], sequence_length=1024)
            correct = [r["correct"] for r in decoder.needle_run(model, tokenizer, samples)]
            rows.append({"keep": keep, "kernel": kernel, "correct": sum(correct), "n": len(correct),
                         "cells": needle.accuracy_table(samples, correct)})  # fmt: skip
            print(f"keep {keep} kernel {kernel}: {sum(correct)}/{len(correct)}", flush=True)
    return {
        "model": MODEL, "pass": SPEC, "lengths": lengths, "depths": list(DEPTHS), "samples_per_cell": args.samples,
        "haystack": "zoo:prose calibration split (never the evaluation split the needle benchmark uses)",
        "seed": SEED, "machine": {**machine(), "load_average": load_average()}, "rows": rows,
    }  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        f"# Needle answers by pooling kernel: fastv after layer 6 on {result['model']}",
        "",
        (
            f"Haystack: {result['haystack']}; {result['samples_per_cell']} prompts per length and depth, lengths "
            f"{', '.join(map(str, result['lengths']))} tokens, depths {', '.join(map(str, result['depths']))}, "
            f"seed {result['seed']}. A prompt is answered when the greedy continuation starts with the planted 5 digits."
        ),
        "",
        "| keep | kernel | needles answered |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['keep']:g} | {row['kernel']} | {row['correct']} / {row['n']} |")
    lines += [
        "",
        f"Machine: {result['machine']['cpu']}, load average {result['machine']['load_average']} (no timings).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="1,7,15")
    parser.add_argument("--keeps", default="0.1,0.25")
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--samples", type=int, default=2)
    result = run(parser.parse_args())
    write_results(ROOT / "benchmarks" / "results", "needle_kernel", result, markdown(result))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
