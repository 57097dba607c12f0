"""GPU throughput of original vs ToMe-compressed models: eager, Triton kernels, torch.compile, AOTInductor.

    .venv/bin/python benchmarks/gpu_throughput.py [--batch-sizes 1,64,256] [--dtype float16] [--aoti]

Models: zoo:dinov2-small compressed as the quickstart recipe does (ToMe, -38% FLOPs at
224 px), and a ViT-B/16-sized model (transformers ViTModel defaults, random weights:
the speed of a shape does not depend on its weights) with ToMe r=13, the paper's
setting. Both models of a pair run the same inputs, interleaved, median of the
repeats after warm-up. Writes benchmarks/results/gpu_throughput.md and .json, naming
the GPU. Needs a CUDA GPU; without one it measures nothing and exits 2.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKCOMP_QUIET", "1")


def model_pairs():
    """(name, original, compressed, input spec) for each benchmarked model."""
    from transformers import ViTConfig, ViTModel

    import tokcomp
    from tokcomp.sources import load_model
    from tokcomp.surgery.adapters.base import InputSpec

    dinov2 = load_model("zoo:dinov2-small").model
    vit_b = ViTModel(ViTConfig(), add_pooling_layer=False).eval()  # 768 wide, 12 layers, 12 heads, 16 px patches
    plans = [
        ("dinov2-small (ToMe -38% FLOPs)", dinov2, [{"type": "tome", "target_flops": "-38%"}]),
        ("ViT-B/16-sized (ToMe r=13)", vit_b, [{"type": "tome", "r": 13}]),
    ]
    for name, original, passes in plans:
        compressed = copy.deepcopy(original)
        tokcomp.apply(compressed, passes, input_spec=InputSpec("image", image_size=224))
        yield name, original.eval(), compressed.eval()


def pair_for(original, compressed):
    from tokcomp.analysis.flops import model_macs
    from tokcomp.export.bench import Pair
    from tokcomp.export.io_spec import ExportWrapper, io_spec
    from tokcomp.reducers.schedule import tokens_after_layers
    from tokcomp.surgery import find_adapter, token_blocks
    from tokcomp.surgery.adapters.base import InputSpec

    spec = io_spec(compressed, "transformers", "image", 224, None)
    geometry = find_adapter(original).geometry(original, InputSpec("image", image_size=224))
    tokens = tokens_after_layers(geometry.input_tokens, [b.reducer for b in token_blocks(compressed)])
    before, after = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers), model_macs(geometry, tokens)
    flops = {"original_gmacs": before / 1e9, "compressed_gmacs": after / 1e9, "ratio": after / before, "ideal_speedup": before / after}
    return Pair(ExportWrapper(original, spec, "transformers"), ExportWrapper(compressed, spec, "transformers"), spec, flops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--aoti", action="store_true", help="also AOTInductor packages (minutes of compile per model)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_throughput")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured, no results written", file=sys.stderr)
        return 2
    from tokcomp.export.artifacts import atomic_file
    from tokcomp.export.bench import available_runtimes, bench_pair, markdown_table
    from tokcomp.fileio import write_json

    runtimes = [r for r in ("cuda-eager", "cuda-kernels", "cuda-compile") if r in available_runtimes()]
    if args.aoti:
        runtimes.append("cuda-aoti")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtype = getattr(torch, args.dtype)
    sections, results = [], {}
    for name, original, compressed in model_pairs():
        pair = pair_for(original, compressed)
        print(f"== {name}: {pair.flops['original_gmacs']:.2f} -> {pair.flops['compressed_gmacs']:.2f} GMACs", flush=True)
        result = bench_pair(
            pair, runtimes, batch_sizes, args.warmup, args.repeats, threads=0, dtype=dtype,
            on_result=lambda row: print(f"  {row['runtime']} batch {row['batch_size']}: {row['speedup']:.2f}x", flush=True),
        )  # fmt: skip
        results[name] = result
        sections.append(f"## {name}\n\n{pair.flops['original_gmacs']:.2f} -> {pair.flops['compressed_gmacs']:.2f} GMACs\n\n" + markdown_table(result))
        del pair, original, compressed
        torch.cuda.empty_cache()
    machine = next(iter(results.values()))["machine"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), results)
    header = (
        "# GPU throughput: original vs compressed\n\n"
        f"Device: {machine['gpu']} (CUDA {machine['cuda']}), torch {machine['torch']}, {args.dtype}; "
        f"median of {args.repeats} interleaved runs after {args.warmup} warm-up runs; images/s.\n\n"
        "cuda-kernels = eager with the reduction steps on tokcomp's Triton kernels.\n\n"
    )
    with atomic_file(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(header + "\n".join(sections))
    print(header + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
