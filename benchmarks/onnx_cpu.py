"""ONNX Runtime CPU throughput: original vs compressed quickstart model, against the FLOPs ratio.

    .venv/bin/python benchmarks/onnx_cpu.py [--checkpoint runs/quickstart] [--batch-size 16]

Compiles recipes/quickstart.yaml into runs/quickstart if that folder is missing,
exports the compressed model to validated portable ONNX on every run (recorded in the
checkpoint), exports the original (rebuilt from the same checkpoint with the
passes skipped) to a temporary file, and times both in ONNX Runtime on the CPU
(2 threads, allow_spinning=0, interleaved runs, median after warm-up).

Target: compressed/original throughput >= 0.9 x original/compressed FLOPs.
Writes benchmarks/results/onnx_cpu.json and onnx_cpu.md, naming the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKCOMP_QUIET", "1")

TARGET = 0.9  # fraction of the FLOPs speed-up the measured speed-up must reach


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "quickstart")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_cpu")
    args = parser.parse_args()

    import tokcomp
    from tokcomp.checkpoint import read_state
    from tokcomp.export import export_checkpoint
    from tokcomp.export.artifacts import atomic_file
    from tokcomp.export.bench import bench_pair, checkpoint_pair, markdown_table
    from tokcomp.fileio import write_json

    if not (args.checkpoint / "tokcomp.json").is_file():
        print(f"compiling {args.recipe} -> {args.checkpoint}", flush=True)
        tokcomp.compile(args.recipe, args.checkpoint)
    # always a fresh export: a model.onnx left in the checkpoint by an older tokcomp would time that version's graph
    print("exporting the compressed model to ONNX (validated)", flush=True)
    onnx_entry = export_checkpoint(args.checkpoint, "onnx")
    pair = checkpoint_pair(args.checkpoint)
    print("exporting the original and timing both in ONNX Runtime", flush=True)
    result = bench_pair(
        pair,
        ["onnxruntime"],
        [args.batch_size],
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        compressed_onnx=args.checkpoint / onnx_entry["file"],
    )
    row = result["results"][0]
    ideal = pair.flops["ideal_speedup"]
    result["target"] = {
        "rule": f"speed-up >= {TARGET} x FLOPs speed-up",
        "speedup": row["speedup"],
        "flops_speedup": ideal,
        "fraction_of_flops_speedup": row["speedup"] / ideal,
        "passed": row["speedup"] >= TARGET * ideal,
    }
    result["checkpoint"] = {"path": str(args.checkpoint), "source": read_state(args.checkpoint).base.source}
    result["onnx_validation"] = onnx_entry["validation"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), result)
    machine = result["machine"]
    text = (
        "# ONNX Runtime CPU: original vs compressed (quickstart)\n\n"
        f"Machine: {machine['cpu']}, {machine['cpu_count']} logical CPUs (shared); torch {machine['torch']}; "
        f"ONNX Runtime CPU, {args.threads} threads, allow_spinning=0; median of {args.repeats} interleaved runs "
        f"after {args.warmup} warm-up runs.\n\n"
        f"Model: {result['checkpoint']['source']}, {pair.flops['original_gmacs']:.3f} -> "
        f"{pair.flops['compressed_gmacs']:.3f} GMACs (FLOPs speed-up {ideal:.2f}x).\n\n"
        + markdown_table(result)
        + f"\nMeasured speed-up {row['speedup']:.2f}x = {row['speedup'] / ideal:.2f} of the FLOPs speed-up "
        f"(target >= {TARGET}): **{'pass' if result['target']['passed'] else 'FAIL'}**.\n"
    )
    with atomic_file(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    print(text)
    return 0 if result["target"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
