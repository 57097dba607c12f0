"""aten ops per forward, original vs compressed: a deterministic stand-in for GPU kernel launches.

    python benchmarks/op_count.py [--output benchmarks/results/op_count]

A ViT-S at batch <= 64 on a GPU is bound by kernel launches, so every small op a reducer adds
costs time there even when it saves FLOPs. The CPU profiler counts the aten ops of one forward
(random weights, no timing, so machine load does not matter); the same count on any machine.
Models: DINOv2-S (ToMe -38%), ViT-B/16 (ToMe r=13), a MiniLM-sized BERT (ToMe r=8 at 128
tokens) and gemma-3-270m's shape (fastv keep 0.25: prefill of 1024 tokens and one decode step).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKCOMP_QUIET", "1")

TOP_KINDS = 8
# Ops that launch no kernel: views and metadata, allocations, and `to` (a real conversion also
# records _to_copy / copy_, which are counted). "launching ops" = total minus these.
NO_KERNEL = {
    "aten::as_strided", "aten::view", "aten::_unsafe_view", "aten::unsqueeze", "aten::squeeze", "aten::expand",
    "aten::slice", "aten::select", "aten::transpose", "aten::t", "aten::permute", "aten::reshape", "aten::alias",
    "aten::detach", "aten::lift_fresh", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::to",
    "aten::split", "aten::chunk", "aten::unbind", "aten::narrow", "aten::expand_as", "aten::resolve_conj",
    "aten::resolve_neg", "aten::result_type",
}  # fmt: skip


def launching(counts: Counter) -> int:
    return sum(v for k, v in counts.items() if k not in NO_KERNEL)


def count_ops(run) -> Counter:
    """aten op name -> calls during one run() (after one warm-up run), on the path a GPU takes: token
    gathers as one `gather` each, not the CPU's row copies (reducers/ops.py ROW_COPY_DEVICES)."""
    from unittest import mock

    import torch
    from torch.profiler import ProfilerActivity, profile

    from tokcomp.reducers import ops

    with torch.inference_mode(), mock.patch.object(ops, "ROW_COPY_DEVICES", ()):
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
    return Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def vision_runs(key: str):
    import torch

    from benchmarks.gpu_throughput import model_pair

    _, original, compressed = model_pair(key)
    pixels = torch.randn(2, 3, 224, 224)
    return {name: (lambda m=m: m(pixel_values=pixels))
            for name, m in (("original", original), ("compressed", compressed))}  # fmt: skip


def bert_runs():
    import torch
    from transformers import BertConfig, BertModel

    import tokcomp

    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536)
    original = BertModel(config, add_pooling_layer=False).eval()
    compressed = tokcomp.apply(copy.deepcopy(original), [{"type": "tome", "r": 8}], sequence_length=128).eval()
    ids = torch.randint(1000, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    return {name: (lambda m=m: m(input_ids=ids, attention_mask=mask))
            for name, m in (("original", original), ("compressed", compressed))}  # fmt: skip


def decoder_runs(length: int = 1024):
    """{'prefill': {...}, 'decode': {...}} runs for gemma-3-270m's shape, original and fastv."""
    import torch

    from benchmarks.decoder_prefill_speed import DEFAULT_PASS, random_model
    from tokcomp.pipeline import apply_passes

    original = random_model("gemma-3-270m", torch.float32).eval()
    compressed = copy.deepcopy(original)
    apply_passes(compressed, [dict(DEFAULT_PASS)], sequence_length=length)
    compressed.eval()
    ids = torch.randint(1000, original.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    runs = {"prefill": {}, "prefill + decode step": {}}
    for name, model in (("original", original), ("compressed", compressed)):
        runs["prefill"][name] = lambda m=model: m(input_ids=ids, use_cache=True)

        def prefill_and_step(m=model):  # the cache records its kept positions, so each step needs its own prefill
            out = m(input_ids=ids, use_cache=True)
            return m(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)

        runs["prefill + decode step"][name] = prefill_and_step
    return runs


def compare(runs: dict) -> dict:
    counts = {name: count_ops(run) for name, run in runs.items()}
    original, compressed = counts["original"], counts["compressed"]
    extra = Counter(compressed)
    extra.subtract(original)
    return {
        "original_ops": sum(original.values()),
        "compressed_ops": sum(compressed.values()),
        "op_ratio": round(sum(compressed.values()) / sum(original.values()), 3),
        "original_launching": launching(original),
        "compressed_launching": launching(compressed),
        "launching_ratio": round(launching(compressed) / launching(original), 3),
        "top_extra": dict(extra.most_common(TOP_KINDS)),
        "top_extra_launching": dict(Counter({k: v for k, v in extra.items() if k not in NO_KERNEL}).most_common(TOP_KINDS)),
    }


def decode_step(rows: dict, label: str) -> None:
    """The decode step's own ops: (prefill + step) minus prefill."""
    both, prefill = rows.pop(f"{label} prefill + decode step", None), rows.get(f"{label} prefill")
    if both is None:
        return
    original = both["original_ops"] - prefill["original_ops"]
    compressed = both["compressed_ops"] - prefill["compressed_ops"]
    row = {"original_ops": original, "compressed_ops": compressed, "op_ratio": round(compressed / original, 3)}
    launch = {k: both[k] - prefill[k] for k in ("original_launching", "compressed_launching")}
    launch["launching_ratio"] = round(launch["compressed_launching"] / launch["original_launching"], 3)
    rows[f"{label} decode step"] = {**row, **launch, "top_extra": {}, "top_extra_launching": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "op_count"))
    parser.add_argument("--only", default="", help="comma-separated subset of row names")
    args = parser.parse_args()

    import torch

    from benchmarks.common import machine, write_results

    torch.set_num_threads(1)
    builders = {
        "dinov2-small ToMe -38% (batch 2)": lambda: {"": vision_runs("dinov2-small")},
        "vit-b16 ToMe r=13 (batch 2)": lambda: {"": vision_runs("vit-b16")},
        "MiniLM-sized BERT ToMe r=8 (batch 2, 128 tokens)": lambda: {"": bert_runs()},
        "gemma-3-270m shape fastv keep 0.25": lambda: {f" {k}": v for k, v in decoder_runs().items()},
    }
    wanted = [s for s in args.only.split(",") if s]
    rows = {}
    for label, build in builders.items():
        if wanted and not any(w in label for w in wanted):
            continue
        for suffix, runs in build().items():
            rows[label + suffix] = compare(runs)
            print(label + suffix, rows[label + suffix]["op_ratio"], flush=True)
        decode_step(rows, label)
    result = {"torch": torch.__version__, "machine": machine(), "rows": rows}
    output = Path(args.output)
    write_results(output.parent, output.stem, result, to_markdown(result))


def to_markdown(result: dict) -> str:
    lines = [
        "# aten ops per forward, original vs compressed (CPU profiler, random weights)",
        "",
        f"torch {result['torch']}. Op counts are deterministic (no timing): each aten op is roughly one kernel launch on a GPU.",
        "",
        "Launching ops leave out views, allocations and no-op `to` calls, which start no GPU kernel.",
        "",
        "| model | original ops | compressed ops | ratio | launching ops, original -> compressed | launching ratio | largest extra launching kinds |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, row in result["rows"].items():
        extra = ", ".join(f"{k.removeprefix('aten::')} +{v}" for k, v in row["top_extra_launching"].items() if v > 0)
        lines.append(
            f"| {label} | {row['original_ops']} | {row['compressed_ops']} | {row['op_ratio']}x | "
            f"{row['original_launching']} -> {row['compressed_launching']} | {row['launching_ratio']}x | {extra} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
