"""How wide to pool the last token's attention: needle answers and prose fidelity by kernel, on the calibration split.

    python benchmarks/needle_kernel.py [--kernels 1,7,15] [--keeps 0.1,0.25] [--lengths 1024,2048]
        [--prose 8] [--prose-length 768]

FastV (after layer 6, gemma-3-270m's first full-attention layer; sink 4, question 32) at each
kernel and kept share, on the *calibration* split of zoo:prose only, so the benchmarks that report
quality (benchmarks/decoder_kvpress.py, decoder_learned_rates.py: evaluation split) stay unseen:
- needles: prompts whose haystack is calibration prose (seed 1, 2 prompts per length and depth
  0.1 / 0.5 / 0.9);
- prose fidelity: `prose` calibration passages of at most `prose_length` tokens, the original's greedy
  continuation of 32 tokens teacher-forced; KL(original || compressed) and top-1 agreement.
The default kernel (15) was chosen on the needles and checked on the prose. Deterministic; no timing.
Writes benchmarks/results/needle_kernel.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine, no_timing_line, write_results  # noqa: E402

MODEL = "zoo:gemma-3-270m"
SPEC = {"type": "fastv", "layer": 6, "sink": 4, "question": 32}
DEPTHS = (0.1, 0.5, 0.9)
SEED = 1  # the benchmark's needles use seed 0 on the evaluation split
CONTINUATION = 32


def run(args) -> dict:
    import transformers

    from tokcomp.evaluation import decoder, needle
    from tokcomp.pipeline import apply_passes
    from tokcomp.zoo import pull

    folder = str(pull(MODEL))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    original = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lengths = [int(x) for x in args.lengths.split(",")]
    calibration = needle.prose_sentences("calib")
    samples = needle.build_samples(tokenizer, lengths, DEPTHS, args.samples, 1, SEED, sentences=calibration)
    passages = [
        tokenizer(text, return_tensors="pt").input_ids
        for text in decoder.prose_prompts(tokenizer, args.prose_length, args.prose, SEED, sentences=calibration)
    ]
    continuations = [decoder.greedy_tokens(original, ids, CONTINUATION) for ids in passages]
    reference = [
        decoder.teacher_forced_logits(original, ids, c) for ids, c in zip(passages, continuations, strict=True)
    ]
    rows = []
    for keep in [float(x) for x in args.keeps.split(",")]:
        for kernel in [int(x) for x in args.kernels.split(",")]:
            model = copy.deepcopy(original)
            apply_passes(model, [{**SPEC, "keep": keep, "kernel": kernel}], sequence_length=1024)
            correct = [r["correct"] for r in decoder.needle_run(model, tokenizer, samples)]
            fidelity = [
                decoder.distribution_fidelity(ref, decoder.teacher_forced_logits(model, ids, c))
                for ref, ids, c in zip(reference, passages, continuations, strict=True)
            ]
            kl = sum(f["kl"] for f in fidelity) / len(fidelity)
            top1 = sum(f["top1_agreement"] for f in fidelity) / len(fidelity)
            rows.append({"keep": keep, "kernel": kernel, "correct": sum(correct), "n": len(correct),
                         "cells": needle.accuracy_table(samples, correct), "prose_kl": kl,
                         "prose_kl_per_passage": [f["kl"] for f in fidelity], "prose_top1": top1})  # fmt: skip
            print(f"keep {keep} kernel {kernel}: {sum(correct)}/{len(correct)}, prose KL {kl:.4f}", flush=True)
    return {
        "model": MODEL, "pass": SPEC, "lengths": lengths, "depths": list(DEPTHS), "samples_per_cell": args.samples,
        "haystack": "zoo:prose calibration split (never the evaluation split the needle benchmark uses)",
        "prose": {"passages": len(passages), "prompt_tokens": [int(p.shape[1]) for p in passages],
                  "continuation": CONTINUATION},
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
    ]
    prose = result.get("prose")
    if prose:
        lengths = f"{min(prose['prompt_tokens'])}-{max(prose['prompt_tokens'])}"
        lines += [
            (
                f"Prose fidelity: {prose['passages']} calibration passages ({lengths} tokens), the original's greedy "
                f"continuation of {prose['continuation']} tokens teacher-forced: KL(original || compressed) in nats "
                "and top-1 agreement, means over passages."
            ),
            "",
        ]
    lines += ["| keep | kernel | needles answered | prose KL | prose top-1 |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        kl = f"{row['prose_kl']:.4f}" if "prose_kl" in row else "-"
        top1 = f"{row['prose_top1']:.3f}" if "prose_top1" in row else "-"
        lines.append(f"| {row['keep']:g} | {row['kernel']} | {row['correct']} / {row['n']} | {kl} | {top1} |")
    lines += ["", no_timing_line(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="1,7,15")
    parser.add_argument("--keeps", default="0.1,0.25")
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--prose", type=int, default=8, help="calibration prose passages for fidelity")
    parser.add_argument("--prose-length", type=int, default=768)
    result = run(parser.parse_args())
    write_results(ROOT / "benchmarks" / "results", "needle_kernel", result, markdown(result))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
