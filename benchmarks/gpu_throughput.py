"""GPU throughput of original vs ToMe-compressed models: eager, Triton kernels, torch.compile, AOTInductor.

    python benchmarks/gpu_throughput.py [--batch-sizes 1,64,256] [--dtype float16] [--aoti] [--out DIR/NAME]
    python benchmarks/gpu_throughput.py --smoke     # no GPU: every step on CPU at batch 1, one run

Models (random weights: the speed of a shape does not depend on its weights, and the
GPU machine has no network, so nothing is downloaded):
  dinov2-small  DINOv2 ViT-S/14 (zoo:dinov2-small's architecture: 384 wide, 12 layers,
                6 heads, 224 px, 257 tokens), compressed as the quickstart recipe does
                (ToMe, -38% FLOPs)
  vit-b16       a ViT-B/16-sized model (transformers ViTModel defaults) with ToMe r=13,
                the paper's setting.
Both models of a pair run the same inputs, interleaved, median of the repeats after
warm-up. Runtimes are the outer loop (eager for every model before any compile), and
results are written after every measurement, so a run cut short keeps what it
measured. Writes <out>.md and <out>.json naming the GPU. Without a GPU (and without
--smoke) it measures nothing and exits 2.
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

# CUDA graphs first after eager: the first H200 run showed these models bound by kernel launches.
GPU_RUNTIMES = "cuda-eager,cuda-graphs,cuda-compile,cuda-kernels"


def dinov2_small():
    """zoo:dinov2-small's architecture (read off its graph by tokcomp.zoo.dinov2) with random weights."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14, image_size=224,
        layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False, architectures=["Dinov2Model"],
    )  # fmt: skip
    return Dinov2Model(config)


def vit_b16():
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(), add_pooling_layer=False)  # 768 wide, 12 layers, 12 heads, 16 px patches


# name -> (label, builder, passes)
MODELS = {
    "dinov2-small": ("dinov2-small, random weights (ToMe -38% FLOPs)", dinov2_small, [{"type": "tome", "target_flops": "-38%"}]),
    "vit-b16": ("ViT-B/16-sized, random weights (ToMe r=13)", vit_b16, [{"type": "tome", "r": 13}]),
}


def model_pair(key: str):
    """(label, original, compressed) for one entry of MODELS."""
    import torch

    import tokcomp

    label, build, passes = MODELS[key]
    torch.manual_seed(0)
    original = build().eval()
    compressed = copy.deepcopy(original)
    tokcomp.apply(compressed, passes, image_size=224)
    return label, original, compressed.eval()


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


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--runtimes", default=GPU_RUNTIMES, help="comma-separated tokcomp bench runtimes")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--aoti", action="store_true", help="also AOTInductor packages (minutes of compile per model)")
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: torch on CPU, batch 1, one run, no warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_throughput")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runtimes, args.batch_sizes, args.dtype, args.warmup, args.repeats = "torch", "1", "float32", 0, 1
    elif args.aoti:
        args.runtimes += ",cuda-aoti"
    return args


def write_results(out: Path, results: dict, args) -> str:
    """<out>.json and <out>.md of everything measured so far; returns the markdown."""
    from tokcomp.export.artifacts import atomic_file
    from tokcomp.export.bench import markdown_table
    from tokcomp.fileio import write_json

    machine = next(iter(results.values()))["machine"]
    device = f"{machine['gpu']} (CUDA {machine['cuda']})" if "gpu" in machine else f"{machine['cpu']} (CPU smoke run)"
    header = (
        "# GPU throughput: original vs compressed\n\n"
        f"Device: {device}, torch {machine['torch']}, {args.dtype}; "
        f"median of {args.repeats} interleaved runs after {args.warmup} warm-up runs; images/s.\n\n"
        "cuda-kernels = eager with the reduction steps on tokcomp's Triton kernels.\n\n"
    )
    sections = [
        f"## {label}\n\n{r['flops']['original_gmacs']:.2f} -> {r['flops']['compressed_gmacs']:.2f} GMACs\n\n" + markdown_table(r)
        for label, r in results.items()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), results)
    with atomic_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(header + "\n".join(sections))
    return header + "\n".join(sections)


def main(argv=None) -> int:
    args = _arguments(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured, no results written (--smoke runs on CPU)", file=sys.stderr)
        return 2
    from tokcomp.export.bench import bench_pair

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtype = None if args.smoke else getattr(torch, args.dtype)
    pairs = {}
    for key in args.models.split(","):
        label, original, compressed = model_pair(key)
        pairs[label] = pair_for(original, compressed)
        flops = pairs[label].flops
        print(f"== {label}: {flops['original_gmacs']:.2f} -> {flops['compressed_gmacs']:.2f} GMACs", flush=True)
    results: dict[str, dict] = {}
    for runtime in args.runtimes.split(","):
        for label, pair in pairs.items():
            result = bench_pair(
                pair, [runtime], batch_sizes, args.warmup, args.repeats, threads=0, dtype=dtype,
                on_result=lambda row, label=label: print(
                    f"  {label} | {row['runtime']} batch {row['batch_size']}: {row['speedup']:.2f}x", flush=True
                ),
            )  # fmt: skip
            if label in results:
                results[label]["results"] += result["results"]
            else:
                results[label] = result
            write_results(args.out, results, args)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(write_results(args.out, results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
