"""DiffRate vs ToMe on zoo:dinov2-small at matched FLOPs, scored on held-out images.

    python benchmarks/diffrate_vs_tome.py [--cuts 35 50] [--samples 512] [--epochs 3]

For each FLOPs cut, ToMe's `target_flops` picks the nearest constant r; DiffRate then
searches with ToMe's achieved GMACs as its target, so both run at (nearly) the same
FLOPs, once per merge rule (--merge-rules: `importance`, DiffRate's own, and
`bipartite`, ToMe's matching). Fidelity = cosine between the original and compressed
CLS embeddings.

Data (disjoint by construction):
- calibration: random resized crops / flips of zoo:imagenet+cifar10+cifar100 (60 images;
  --calibration-data zoo:imagenet for the 20 ImageNet photos only);
- evaluation: zoo:skimage (16 photos never used for calibration), as processed by the
  model (one centre crop each), plus --eval-views random crops / flips of those photos.

Writes benchmarks/results/diffrate_vs_tome.{json,md}.
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

from benchmarks.common import bootstrap_mean, machine  # noqa: E402
from tokcomp.analysis.fidelity import compare_models  # noqa: E402
from tokcomp.data import load_samples, make_batches  # noqa: E402
from tokcomp.pipeline import PassContext, run_passes  # noqa: E402
from tokcomp.recipe import CalibrationSpec, ModelSpec, parse_pass_list  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "zoo:dinov2-small"
CALIBRATION_DATA = "zoo:imagenet+cifar10+cifar100"
EVALUATION_DATA = "zoo:skimage"
MATCH_TOLERANCE = 0.01  # FLOPs of the two methods within 1% of each other


def compress(loaded, passes: list[dict], calibration: CalibrationSpec | None, seed: int):
    model = copy.deepcopy(loaded.model)
    ctx = PassContext(loaded.input_spec, seed, calibration, loaded)
    started = time.perf_counter()
    (record,) = run_passes(model, parse_pass_list(passes), ctx)
    return model, record.metadata, time.perf_counter() - started


def evaluation_sets(loaded, views: int, seed: int, batch_size: int) -> dict[str, list]:
    spec = loaded.input_spec
    photos = load_samples(EVALUATION_DATA, "image", None, seed)
    sets = {f"{EVALUATION_DATA} ({len(photos)} photos)": photos}
    if views:
        sets[f"{EVALUATION_DATA} ({views} random views)"] = load_samples(
            EVALUATION_DATA, "image", views, seed + 1, augment=True
        )
    return {name: list(make_batches(s, loaded.processor, spec.modality, batch_size)) for name, s in sets.items()}


def fidelity(original, model, batches_by_set: dict, pooling: str) -> dict:
    return {
        name: compare_models(original, model, batches, pooling, per_sample=True)
        for name, batches in batches_by_set.items()
    }


def paired(diffrate: dict, tome: dict, resamples: int = 10_000) -> dict:
    """DiffRate minus ToMe per image: mean, 95% bootstrap interval, medians, images where DiffRate is higher."""
    ours, theirs = torch.tensor(diffrate["cosines"]), torch.tensor(tome["cosines"])
    diff = ours - theirs
    interval = bootstrap_mean(diff, resamples)
    return {
        "mean": interval["mean"],
        "ci95": interval["ci95"],
        "median_diffrate": ours.median().item(),
        "median_tome": theirs.median().item(),
        "higher": int((diff > 0).sum()),
        "samples": len(diff),
    }


def schedule_pass(rule: str, counts: dict) -> dict:
    """The DiffRate pass applying stored counts ({prune_kept, merge_kept}), no search."""
    schedule = {"prune": counts["prune_kept"], "merge": counts["merge_kept"]}
    return {"type": "diffrate", "merge_rule": rule, "schedule": schedule}


def rescore(path: Path, args) -> dict:
    """Re-measure the fidelity of stored results (their schedules; no search) with per-image cosines."""
    result = json.loads(path.read_text())
    loaded = load_model(ModelSpec(source=result["model"]))
    eval_sets = evaluation_sets(loaded, args.eval_views, args.seed, args.batch_size)
    original = loaded.model

    def measure(passes: list[dict]) -> dict:
        model, _, _ = compress(loaded, passes, None, args.seed)
        return fidelity(original, model, eval_sets, loaded.pooling)

    for row in result["rows"]:
        row["tome"]["fidelity"] = measure([{"type": "tome", "r": row["tome"]["r"]}])
        for rule, entry in row["diffrate"].items():
            entry["fidelity"] = measure([schedule_pass(rule, entry)])
            if "start_only" in entry:
                entry["start_only"]["fidelity"] = measure([schedule_pass(rule, entry["search"]["start_schedule"])])
    result["evaluation"] = list(eval_sets)
    return result


def run(args) -> dict:
    torch.manual_seed(args.seed)
    loaded = load_model(ModelSpec(source=MODEL, image_size=args.image_size))
    if args.image_size:  # quick runs at a lower resolution: the processor must crop to match
        loaded.processor.crop_size = {"height": args.image_size, "width": args.image_size}
        loaded.processor.size = {"shortest_edge": round(args.image_size * 256 / 224)}
    original = loaded.model
    eval_sets = evaluation_sets(loaded, args.eval_views, args.seed, args.batch_size)
    calibration = CalibrationSpec(
        data=args.calibration_data, samples=args.samples, batch_size=args.batch_size, augment=True
    )
    rows = []
    for cut in args.cuts:
        tome, tome_meta, _ = compress(loaded, [{"type": "tome", "target_flops": f"-{cut}%"}], None, args.seed)
        target = f"{tome_meta['gmacs']:.6f}G"
        row = {
            "cut_asked": f"-{cut}%",
            "tome": {
                "r": tome_meta["r_per_layer"][0],
                "gmacs": tome_meta["gmacs"],
                "tokens_per_layer": tome_meta["tokens_per_layer"],
                "fidelity": fidelity(original, tome, eval_sets, loaded.pooling),
            },
            "diffrate": {},
        }
        for rule in args.merge_rules:
            diffrate_pass = {
                "type": "diffrate", "target_flops": target, "epochs": args.epochs, "merge_rule": rule, **args.diffrate,
            }  # fmt: skip
            diffrate, meta, seconds = compress(loaded, [diffrate_pass], calibration, args.seed)
            gap = abs(meta["gmacs"] - tome_meta["gmacs"]) / tome_meta["gmacs"]
            # Ablation: the chosen start shape alone, without the gradient search.
            start_pass = schedule_pass(rule, meta["report"]["start_schedule"])
            start_model, start_meta, _ = compress(loaded, [start_pass], None, args.seed)
            row["diffrate"][rule] = {
                "target_gmacs": tome_meta["gmacs"],
                "gmacs": meta["gmacs"],
                "prune_kept": meta["prune_kept"],
                "merge_kept": meta["merge_kept"],
                "search": meta["report"],
                "pass_seconds": round(seconds, 1),
                "fidelity": fidelity(original, diffrate, eval_sets, loaded.pooling),
                "flops_gap": gap,
                "flops_matched": gap <= MATCH_TOLERANCE,
                "start_only": {
                    "gmacs": start_meta["gmacs"],
                    "fidelity": fidelity(original, start_model, eval_sets, loaded.pooling),
                },
            }
        rows.append(row)
    dense = next(iter(rows[0]["diffrate"].values()))["search"]["original_gmacs"]
    return {
        "model": MODEL,
        "input": vars(loaded.input_spec),
        "original_gmacs": dense,
        "calibration": {
            "data": args.calibration_data,
            "samples": args.samples,
            "augment": True,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            **args.diffrate,
        },
        "evaluation": list(eval_sets),
        "machine": machine(),
        "note": args.note,
        "rows": rows,
    }


def combine(paths: list[Path], note: str) -> dict:
    """One result from runs of single cuts (e.g. run side by side on a shared machine)."""
    parts = [json.loads(p.read_text()) for p in paths]
    result = {**parts[0], "rows": [row for part in parts for row in part["rows"]]}
    result["note"] = note or parts[0]["note"]
    return result


def markdown(result: dict) -> str:
    sets, calibration = result["evaluation"], result["calibration"]
    lines = [
        "# DiffRate vs ToMe at matched FLOPs (zoo:dinov2-small)",
        "",
        f"Input {result['input']['image_size']} px, {result['original_gmacs']:.3f} GMACs unreduced. "
        f"Fidelity = mean cosine of the CLS embedding to the original model's (min in brackets).",
        f"Calibration (DiffRate only): {calibration['samples']} random crops / flips of {calibration['data']}, "
        f"{calibration['epochs']} epochs, batch {calibration['batch_size']}.",
        f"Evaluation, held out (never used for calibration): {'; '.join(sets)}.",
        "",
        "| cut asked | method | GMACs | " + " | ".join(f"cosine, {s}" for s in sets) + " | search wall time |",
        "|---|---|---|" + "---|" * len(sets) + "---|",
    ]

    def cells(entry):
        return " | ".join(
            f"{entry['fidelity'][s]['cosine_mean']:.4f} ({entry['fidelity'][s]['cosine_min']:.4f})" for s in sets
        )

    for row in result["rows"]:
        tome = row["tome"]
        lines.append(f"| {row['cut_asked']} | ToMe r={tome['r']} | {tome['gmacs']:.3f} | {cells(tome)} | - |")
        for rule, entry in row["diffrate"].items():
            search = entry["search"]
            matched = "" if entry["flops_matched"] else f" (FLOPs gap {entry['flops_gap']:.1%} > 1%)"
            lines.append(
                f"| {row['cut_asked']} | DiffRate, {rule} merging | {entry['gmacs']:.3f}{matched} | {cells(entry)} | "
                f"{search['search_seconds']:.0f} s ({entry['pass_seconds']:.0f} s with data) |"
            )
    rules = list(result["rows"][0]["diffrate"])
    for rule in rules:
        deltas = [
            row["diffrate"][rule]["fidelity"][s]["cosine_mean"] - row["tome"]["fidelity"][s]["cosine_mean"]
            for row in result["rows"]
            for s in sets
        ]
        lines += [
            "",
            f"DiffRate ({rule} merging) minus ToMe, mean cosine: {', '.join(f'{d:+.4f}' for d in deltas)} "
            f"(DiffRate higher in {sum(d > 0 for d in deltas)} of {len(deltas)} comparisons).",
        ]
    if all("cosines" in row["tome"]["fidelity"][s] for row in result["rows"] for s in sets):
        lines += [
            "",
            "## Paired, image by image",
            "",
            "DiffRate minus ToMe on the same images: mean with a 95% bootstrap interval (10,000 "
            "resamples of the images), medians, and on how many images DiffRate is closer to the original.",
            "",
            "| cut | rule | set | mean difference (95% interval) | median DiffRate / ToMe | DiffRate higher |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            for rule, entry in row["diffrate"].items():
                for s in sets:
                    p = paired(entry["fidelity"][s], row["tome"]["fidelity"][s])
                    lines.append(
                        f"| {row['cut_asked']} | {rule} | {s} | {p['mean']:+.4f} ({p['ci95'][0]:+.4f} to "
                        f"{p['ci95'][1]:+.4f}) | {p['median_diffrate']:.4f} / {p['median_tome']:.4f} | "
                        f"{p['higher']} of {p['samples']} |"
                    )
    lines += ["", "DiffRate schedules (kept tokens per block, CLS included):", ""]
    for row in result["rows"]:
        for rule, entry in row["diffrate"].items():
            lines.append(f"- {row['cut_asked']}, {rule}: prune {entry['prune_kept']}, merge {entry['merge_kept']}")
    if any("start_only" in entry for row in result["rows"] for entry in row["diffrate"].values()):
        lines += [
            "",
            "## Where each DiffRate schedule came from",
            "",
            "The search scores schedule shapes (power p: 1 = constant r, > 1 back-loaded) on its first "
            "calibration batches, starts from the best, and returns the best-scoring counts there (task "
            "loss, 1 - cosine) among the start and each epoch's read-out within 1% of the target FLOPs. "
            "'Start only' applies the chosen start's counts with no gradient search.",
            "",
            "| cut | rule | start p (score) | epoch read-out scores | kept | start only: "
            + " | start only: ".join(sets)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(sets),
        ]
        for row in result["rows"]:
            for rule, entry in row["diffrate"].items():
                if "start_only" not in entry:
                    continue
                search = entry["search"]
                chosen = next(c for c in search["start"] if c["chosen"])
                epochs = ", ".join(f"{e['score']:.4f}" for e in search["epochs"])
                start_cells = " | ".join(f"{entry['start_only']['fidelity'][s]['cosine_mean']:.4f}" for s in sets)
                lines.append(
                    f"| {row['cut_asked']} | {rule} | {chosen['power']:g} ({chosen['score']:.4f}) | {epochs} | "
                    f"{search['kept']} | {start_cells} |"
                )
    m = result["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['threads']} torch threads, torch {m['torch']}."]
    if result["note"]:
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, nargs="+", default=[35, 50], help="FLOPs cuts in percent")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--calibration-data", default=CALIBRATION_DATA, help="images to draw calibration crops from")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--merge-rules", nargs="+", default=["importance", "bipartite"], help="DiffRate merge rules to search with"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-views", type=int, default=128, help="random views of the held-out photos (0: none)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the model's 224)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--diffrate", type=json.loads, default={}, help='extra DiffRate pass keys, JSON: {"lr": 0.05}')
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=RESULTS / "diffrate_vs_tome")
    parser.add_argument(
        "--combine", type=Path, nargs="+", help="merge the rows of earlier result .json files instead of running"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="re-measure fidelity of the stored schedules in --out (no search)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rescore:
        result = rescore(args.out.with_suffix(".json"), args)
    elif args.combine:
        result = combine(args.combine, args.note)
    else:
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
