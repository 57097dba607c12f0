"""Micro-benchmark: tokcomp's Triton token kernels vs the PyTorch reference ops, median ms per call.

    python benchmarks/kernel_micro.py [--dtype float16] [--out DIR/NAME]
    python benchmarks/kernel_micro.py --smoke   # no GPU: tiny shapes under Triton's interpreter, one run

Shapes are the reduction steps of the benchmarked models (ViT-B/16 ToMe r=13 at 197
tokens, DINOv2-S at 257 tokens, a large merge of N/4 at 577 tokens) at batch 64 and
256; ToMe's step is an index merge that keeps N - r tokens and adds r into them. Each
kernel is timed with CUDA events, median of --repeats calls after warm-up, against the
reference (gather + scatter_add in PyTorch eager) on the same inputs; the index merge
is also timed at other SOURCE_CHUNK values (the chunk of sources each program examines
per step). Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (label, batch, tokens, width, merged)
GPU_SHAPES = [
    ("ViT-B ToMe r=13", 64, 197, 768, 13),
    ("ViT-B ToMe r=13", 256, 197, 768, 13),
    ("DINOv2-S r=24", 64, 257, 384, 24),
    ("DINOv2-S r=24", 256, 257, 384, 24),
    ("ViT-B 577 tokens r=144", 64, 577, 768, 144),
]
SMOKE_SHAPES = [("smoke", 2, 17, 20, 4)]
CHUNKS = (4, 8, 16, 32)


def make_case(batch, tokens, width, merged, dtype, device):
    import torch

    generator = torch.Generator().manual_seed(0)
    t = torch.randn(batch, tokens, width, generator=generator).to(dtype)
    order = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(batch)])
    src, kept = order[:, :merged], order[:, merged:].sort(dim=-1).values
    dst = torch.randint(0, tokens - merged, (batch, merged), generator=generator)  # shared destinations included
    return [x.to(device) for x in (t, kept, src, dst)]


def median_ms(fn, warmup: int, repeats: int, cuda: bool) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def bench_shape(shape, dtype, warmup, repeats, cuda: bool) -> list[dict]:
    """Rows for one shape: each op's kernel vs reference, then the index merge per chunk size."""
    from tokcomp.plugins_cuda import triton_kernels as kernels
    from tokcomp.reducers import ops as reference

    label, batch, tokens, width, merged = shape
    t, kept, src, dst = make_case(batch, tokens, width, merged, dtype, "cuda" if cuda else "cpu")
    ops = {
        "gather_tokens": (lambda: kernels.gather_tokens(t, kept), lambda: reference.gather_tokens_reference(t, kept)),
        "index_merge": (
            lambda: kernels.index_merge(t, kept, src, dst),
            lambda: reference.index_merge_sum_reference(t, kept, src, dst),
        ),
    }
    common = {"shape": label, "batch": batch, "tokens": tokens, "width": width, "merged": merged}
    rows = []
    for op, (kernel, torch_op) in ops.items():
        kernel_ms = median_ms(kernel, warmup, repeats, cuda)
        torch_ms = median_ms(torch_op, warmup, repeats, cuda)
        rows.append({**common, "op": op, "triton_ms": kernel_ms, "torch_ms": torch_ms, "speedup": torch_ms / kernel_ms})
    for chunk in CHUNKS:
        rows.append({**common, "op": f"index_merge CHUNK={chunk}", "triton_ms": _chunk_ms(t, kept, src, dst, chunk, warmup, repeats, cuda)})
    return rows


def _chunk_ms(t, kept, src, dst, chunk, warmup, repeats, cuda) -> float:
    from tokcomp.plugins_cuda import triton_kernels as kernels

    saved = kernels.SOURCE_CHUNK
    kernels.SOURCE_CHUNK = chunk  # the launcher reads it at every call
    try:
        return median_ms(lambda: kernels.index_merge(t, kept, src, dst), warmup, repeats, cuda)
    finally:
        kernels.SOURCE_CHUNK = saved


def markdown(rows: list[dict], machine: str, dtype: str, timer: str) -> str:
    lines = [
        "# Token kernels: Triton vs PyTorch reference\n",
        f"Device: {machine}; {dtype}; median ms per call ({timer}).\n",
        "| shape | batch | op | Triton ms | torch ms | speed-up |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        torch_ms = f"{row['torch_ms']:.4f}" if "torch_ms" in row else "-"
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        lines.append(f"| {row['shape']} | {row['batch']} | {row['op']} | {row['triton_ms']:.4f} | {torch_ms} | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="no GPU: tiny shapes under TRITON_INTERPRET=1, one run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernel_micro")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        args.warmup, args.repeats = 0, 1
    import torch

    from tokcomp.fileio import write_json

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA GPU on this machine: nothing measured (--smoke runs under Triton's interpreter)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    machine = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if cuda else "CPU, Triton interpreter (smoke run)"
    rows = []
    for shape in GPU_SHAPES if cuda else SMOKE_SHAPES:
        rows += bench_shape(shape, dtype, args.warmup, args.repeats, cuda)
        print(f"  {shape[0]} batch {shape[1]}: done", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), {"machine": machine, "torch": torch.__version__, "dtype": args.dtype, "rows": rows})
    text = markdown(rows, machine, args.dtype, "CUDA events" if cuda else "wall clock")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
