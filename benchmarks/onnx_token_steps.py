"""ONNX Runtime CPU: the token steps as traced (GatherElements / ScatterElements) vs the portable flavour's.

    python benchmarks/onnx_token_steps.py [--repeats 9] [--output benchmarks/results/onnx_token_steps]

Each step of reducers/ops.py is exported twice with the same dynamic axes as a model export:
the reference implementation (what tracing records: an expanded index, GatherElements,
ScatterElements) and export/portable_ops.py's (row Gather, one-hot MatMul), which the portable
ONNX flavour uses. Both run in ONNX Runtime (2 threads, no spinning) on the same inputs,
interleaved call by call; shapes are those of a ToMe block: 32 sentences of 40 tokens
(MiniLM, width 384 + the weight column) and 16 DINOv2-S images of 257 tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKCOMP_QUIET", "1")

import torch  # noqa: E402

from benchmarks.common import interleaved_throughput, load_average, machine, write_results  # noqa: E402

# (label, batch, tokens, width, kept, moved): the merge keeps `kept` rows and adds `moved` into them
SHAPES = [
    ("MiniLM, 32 sentences of 40 tokens", 32, 40, 385, 34, 6),
    ("DINOv2-S, 16 images of 257 tokens", 16, 257, 385, 241, 16),
]
CALLS = 50  # calls of a step per timed step of the interleaving


class Step(torch.nn.Module):
    def __init__(self, name: str, implementation):
        super().__init__()
        self.name, self.implementation = name, implementation

    def forward(self, t, kept, src, dst):
        if self.name == "gather_tokens":
            return self.implementation(t, kept)
        return self.implementation(t, kept, src, dst)


def inputs(batch, tokens, width, kept, moved, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randperm(tokens, generator=g) for _ in range(batch)])
    return (
        torch.randn(batch, tokens, width, generator=g),
        rows[:, :kept].contiguous(),
        rows[:, kept : kept + moved].contiguous(),
        torch.randint(0, kept, (batch, moved), generator=g),
    )


def export_step(module: Step, example, path: Path) -> None:
    batch, tokens, kept, moved = (torch.export.Dim(n) for n in ("batch", "tokens", "kept", "moved"))
    dims = {
        "t": {0: batch, 1: tokens},
        "kept": {0: batch, 1: kept},
        "src": {0: batch, 1: moved},
        "dst": {0: batch, 1: moved},
    }
    torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dims, opset_version=18).save(str(path))


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(repeats: int) -> dict:
    import warnings

    from tokcomp.export.portable_ops import PORTABLE_OPS
    from tokcomp.reducers.ops import REFERENCE_OPS

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokcomp-steps-") as tmp:
        for label, *shape in SHAPES:
            example = inputs(*shape)
            feeds = dict(zip(("t", "kept", "src", "dst"), (x.numpy() for x in example)))
            for step in ("gather_tokens", "index_merge_sum"):
                sessions = {}
                for flavour, table in (("traced", REFERENCE_OPS), ("portable", PORTABLE_OPS)):
                    path = Path(tmp) / f"{step}-{flavour}.onnx"
                    export_step(Step(step, table[step]), example, path)
                    sessions[flavour] = session(path)
                want = Step(step, REFERENCE_OPS[step])(*example).numpy()
                for flavour, s in sessions.items():  # the same numbers either way
                    got = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]
                    assert abs(got - want).max() < 1e-4, (step, flavour)
                runners = {
                    flavour: lambda s=s, feeds=feeds: [
                        s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()}) for _ in range(CALLS)
                    ]
                    for flavour, s in sessions.items()
                }
                load_before = load_average()
                speed = interleaved_throughput(runners, batch=CALLS, repeats=repeats, warmup=1)
                rows.append(
                    {
                        "shape": label,
                        "step": step,
                        "traced_us": 1e6 * speed["traced"]["median_s"] / CALLS,
                        "portable_us": 1e6 * speed["portable"]["median_s"] / CALLS,
                        "load_average": [load_before, load_average()],
                    }
                )
                print(rows[-1], flush=True)
    return {"machine": machine(), "repeats": repeats, "calls_per_round": CALLS, "rows": rows}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# ONNX Runtime CPU: token steps as traced vs as the portable flavour writes them",
        "",
        f"Machine: {m['cpu']}, {m['threads']} threads; torch {m['torch']}; ONNX Runtime CPU, 2 threads, "
        f"no spinning; median of {result['repeats']} interleaved rounds of {result['calls_per_round']} calls.",
        "",
        "Traced: an expanded [B, K, C] index, GatherElements, ScatterElements (reduction add). Portable: a row "
        "Gather of the flattened tensor; the merge adds the moved rows through a one-hot MatMul.",
        "",
        "| shape | step | traced (us/call) | portable (us/call) | speed-up | load (before, after) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        load = ", ".join(f"{x:.2f}" for x in r["load_average"])
        lines.append(
            f"| {r['shape']} | {r['step']} | {r['traced_us']:.0f} | {r['portable_us']:.0f} | "
            f"{r['traced_us'] / r['portable_us']:.2f}x | {load} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "onnx_token_steps"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run(args.repeats)
    out = Path(args.output)
    write_results(out.parent, out.name, result, markdown(result))


if __name__ == "__main__":
    main()
