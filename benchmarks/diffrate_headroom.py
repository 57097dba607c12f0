"""How good can DiffRate's reduction rule get on zoo:dinov2-small, whatever the schedule?

    python benchmarks/diffrate_headroom.py [--cuts 35 50]

The rate search can only choose kept counts; the rule that spends them (prune the least
CLS-attended tokens, merge the rest of the tail into its most similar kept token) is
fixed. This script applies that rule with hand-made schedules of many shapes at ToMe's
FLOPs, no search, and compares them with ToMe's constant r and with ToMe given the same
shapes. If no schedule lets DiffRate's rule reach ToMe, no search can.

Schedule shapes: tokens after block l = N - R * s_l, with s_l = ((l + 1) / L)^p
("from block 0") or s_0 = 0, s_l = (l / (L - 1))^p ("block 0 kept", DiffRate's
convention); R is set by bisection so the FLOPs match ToMe's within 1%. p < 1 removes
tokens early, p > 1 late. Each shape is applied as merge-only (prune kept = tokens in),
prune-only, and (ToMe rows) as a per-block r list when every r fits ToMe's half cap.

Data: zoo:skimage (16 photos, the held-out set of benchmarks/diffrate_vs_tome.py; nothing
is tuned here) and the 60 zoo:imagenet+cifar10+cifar100 images DiffRate calibrates on.
Writes benchmarks/results/diffrate_headroom.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from tokcomp.analysis.fidelity import compare_models  # noqa: E402
from tokcomp.analysis.flops import model_macs  # noqa: E402
from tokcomp.api import apply  # noqa: E402
from tokcomp.data import load_samples, make_batches  # noqa: E402
from tokcomp.recipe import ModelSpec  # noqa: E402
from tokcomp.reducers.tome import ToMe  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.surgery.registry import find_adapter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "zoo:dinov2-small"
DATA = {"held-out photos": "zoo:skimage", "calibration images": "zoo:imagenet+cifar10+cifar100"}
POWERS = (0.5, 1.0, 1.5, 2.0)
MIN_TOKENS = 2  # CLS + one patch token
MATCH_TOLERANCE = 0.01  # a shape whose FLOPs miss the target by more (it cannot reach it) is left out


def shape(layers: int, power: float, keep_block0: bool) -> list[float]:
    if keep_block0:
        return [0.0] + [(layer / (layers - 1)) ** power for layer in range(1, layers)]
    return [((layer + 1) / layers) ** power for layer in range(layers)]


def fit_tokens(geometry, weights: list[float], target_macs: float) -> list[int]:
    """Tokens after every block, N - R * weight, with R chosen so the FLOPs meet the target."""
    n = geometry.input_tokens

    def tokens(reduction: float) -> list[int]:
        return [max(MIN_TOKENS, round(n - reduction * w)) for w in weights]

    low, high = 0.0, float(n)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if model_macs(geometry, tokens(middle)) > target_macs else (low, middle)
    return tokens(high)


def tome_r(entering: list[int], tokens: list[int], protected: int) -> list[int] | None:
    """The per-block r list giving these counts, or None if some r exceeds ToMe's half cap."""
    r = [a - b for a, b in zip(entering, tokens, strict=True)]
    fits = all(value <= ToMe.limit(a - protected) for value, a in zip(r, entering, strict=True))
    return r if fits else None


def run(args) -> dict:
    loaded = load_model(ModelSpec(source=MODEL))
    original = loaded.model.eval()
    adapter = find_adapter(original)
    geometry, protected = adapter.geometry(original, loaded.input_spec), adapter.protected_tokens(original)
    data = {
        name: list(make_batches(load_samples(source, "image", None, args.seed), loaded.processor, "image", 16))
        for name, source in DATA.items()
    }

    def fidelity(passes: list[dict]) -> dict[str, float]:
        model = apply(copy.deepcopy(original), passes, image_size=loaded.input_spec.image_size).eval()
        return {name: compare_models(original, model, batches, loaded.pooling)["cosine_mean"] for name, batches in data.items()}

    n, layers = geometry.input_tokens, geometry.num_layers
    rows = []
    for cut in args.cuts:
        tome_model = apply(copy.deepcopy(original), [{"type": "tome", "target_flops": f"-{cut}%"}], image_size=loaded.input_spec.image_size)
        tome_tokens = [b.reducer.kept_tokens(t) for b, t in _blocks_with_input(tome_model, n)]
        target = model_macs(geometry, tome_tokens)
        entries = [{"rule": "tome", "shape": "constant r", "tokens": tome_tokens, "gmacs": target / 1e9,
                    "cosine": fidelity([{"type": "tome", "target_flops": f"-{cut}%"}])}]  # fmt: skip
        for power in POWERS:
            for keep_block0 in (False, True):
                label = f"p={power:g}, {'block 0 kept' if keep_block0 else 'from block 0'}"
                tokens = fit_tokens(geometry, shape(layers, power, keep_block0), target)
                entering = [n, *tokens[:-1]]
                gmacs = model_macs(geometry, tokens) / 1e9
                for rule, schedule in (
                    ("diffrate merge-only", {"prune": entering, "merge": tokens}),
                    ("diffrate prune-only", {"prune": tokens, "merge": entering}),
                ):
                    cos = fidelity([{"type": "diffrate", "schedule": schedule, "merge_rule": "importance"}])
                    entries.append({"rule": rule, "shape": label, "tokens": tokens, "gmacs": gmacs, "cosine": cos})
                if (r := tome_r(entering, tokens, protected)) is not None:
                    cos = fidelity([{"type": "tome", "r": r}])
                    entries.append({"rule": "tome", "shape": label, "tokens": tokens, "gmacs": gmacs, "cosine": cos})
                print(f"-{cut}% {label} done", flush=True)
        rows.append({"cut_asked": f"-{cut}%", "target_gmacs": target / 1e9, "entries": entries})
    return {"model": MODEL, "data": DATA, "original_gmacs": model_macs(geometry, [n] * layers) / 1e9,
            "machine": machine(), "rows": rows}  # fmt: skip


def _blocks_with_input(model, tokens: int):
    """(block, tokens entering it) for every rewritten block, in order."""
    from tokcomp.surgery.block import TokenBlock

    for block in (m for m in model.modules() if isinstance(m, TokenBlock)):
        yield block, tokens
        tokens = block.reducer.kept_tokens(tokens) if block.reducer is not None else tokens


def matched(entry: dict, target: float) -> bool:
    return abs(entry["gmacs"] - target) / target <= MATCH_TOLERANCE


def markdown(result: dict) -> str:
    names = list(result["data"])
    lines = [
        f"# DiffRate's reduction rule vs ToMe's, over schedule shapes ({result['model']})",
        "",
        "No search: each row applies a hand-made schedule at ToMe's FLOPs (within 1%). "
        "Cells: mean cosine of the CLS embedding to the original model's. "
        f"Data: {', '.join(f'{k} = {v}' for k, v in result['data'].items())}. "
        "Generated by `benchmarks/diffrate_headroom.py`.",
    ]
    for row in result["rows"]:
        lines += ["", f"## {row['cut_asked']} FLOPs (target {row['target_gmacs']:.3f} GMACs)", ""]
        lines += ["| rule | schedule shape | GMACs | " + " | ".join(names) + " | tokens after each block |"]
        lines += ["|---|---|---|" + "---|" * len(names) + "---|"]
        entries = [e for e in row["entries"] if matched(e, row["target_gmacs"])]
        for e in entries:
            cells = " | ".join(f"{e['cosine'][name]:.4f}" for name in names)
            lines.append(f"| {e['rule']} | {e['shape']} | {e['gmacs']:.3f} | {cells} | {e['tokens']} |")
        lines.append("")
        for rule in ("diffrate merge-only", "diffrate prune-only", "tome"):
            best = max((e for e in entries if e["rule"] == rule), key=lambda e: e["cosine"][names[0]])
            scores = ", ".join(f"{name} {best['cosine'][name]:.4f}" for name in names)
            lines.append(f"- best {rule}: {best['shape']}: {scores}")
        left_out = sorted({e["shape"] for e in row["entries"] if not matched(e, row["target_gmacs"])})
        if left_out:
            lines.append(f"- left out (cannot meet the FLOPs with >= {MIN_TOKENS} tokens): {'; '.join(left_out)}")
    m = result["machine"]
    lines += ["", f"Machine: {m['cpu']}, torch {m['torch']}. Fidelity only (no timing)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, nargs="+", default=[35, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "diffrate_headroom")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.out.with_suffix(".json").read_text())
    else:
        started = time.perf_counter()
        result = run(args)
        result["seconds"] = round(time.perf_counter() - started)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
