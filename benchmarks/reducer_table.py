"""Every token reducer at equal FLOPs, training-free, on DINOv2-S and MiniLM-L6.

    python benchmarks/reducer_table.py [--passes tome,token_transform,prune,evit]
        [--budgets=-20%,-35%,-50%] [--repeats 5] [--text-samples 256] [--text-length 16]
    python benchmarks/reducer_table.py --sweep     # Token Transforming variants on tuning data only

Rows: every registered pass whose config accepts `target_flops` (so a new token pass such
as `diffrate` joins by re-running), plus two ablations of Token Transforming (k = 1, and
ToMe's key metric). Columns: three FLOPs cuts.

- Budget: passes with a fixed schedule (FIXED_SCHEDULE) all get the same per-block r list,
  the one whose FLOPs land closest to the cut (constant r, or r + 1 in the first blocks),
  so they keep exactly the same tokens after every block. Other passes (learned schedules)
  get `target_flops` and calibrate on the tuning data; their achieved cut is reported.
- Fidelity: cosine of the pooled embedding to the original model's on the same inputs:
  DINOv2 CLS token on the built-in images (zoo:images); MiniLM size-weighted mean pooling
  on held-out zoo:text sentences with at least --text-length tokens, cut to exactly that
  length (no padding, so every input has the FLOPs of the reference input).
- Speed: CPU throughput ratio, original vs compressed timed interleaved in the same run,
  batch 16, 2 threads, median of --repeats after one warm-up round.
- Tuning data (sweep, and calibration of learned passes) never overlaps the evaluation
  data: CIFAR-10/100 sample images, and the zoo:text sentences left after the held-out ones.

Writes benchmarks/results/reducers.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import interleaved_throughput, machine  # noqa: E402
from tokcomp.analysis.baselines import random_drop_like  # noqa: E402
from tokcomp.analysis.fidelity import model_outputs  # noqa: E402
from tokcomp.analysis.flops import model_macs  # noqa: E402
from tokcomp.data import Sample, load_samples, make_batches  # noqa: E402
from tokcomp.passes import PASSES  # noqa: E402
from tokcomp.pipeline import PassContext, run_passes  # noqa: E402
from tokcomp.recipe import CalibrationSpec, parse_pass_list  # noqa: E402
from tokcomp.reducers.base import Reducer  # noqa: E402
from tokcomp.reducers.rate import tokens_after_removals  # noqa: E402
from tokcomp.sources import LoadedModel, load_model  # noqa: E402
from tokcomp.surgery import find_adapter  # noqa: E402
from tokcomp.surgery.adapters.base import Geometry, InputSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIXED_SCHEDULE = {"tome", "token_transform", "prune", "evit", "zero_tprune"}
ABLATIONS = {  # extra rows after `token_transform` (fidelity only, not timed): label -> pass settings
    "token_transform k=2 (many-to-many)": {"type": "token_transform", "k": 2},
    "token_transform on keys": {"type": "token_transform", "metric": "keys"},
}
RANDOM_DROP = "random drop (baseline)"  # same token counts, uniformly random tokens kept
SWEEP = {  # Token Transforming variants scored on tuning data (--sweep)
    "tome": {"type": "tome"},
    **{
        f"token_transform {sel} {metric} k={k} t={t}": {
            "type": "token_transform", "target_selection": sel, "metric": metric, "k": k, "temperature": t,
        }
        for sel in ("alternating", "cls_attention")
        for metric in ("hidden", "keys")
        for k, t in ((1, 0.01), (2, 0.01), (2, 0.015), (2, 0.02), (2, 0.03), (2, 0.05), (4, 0.1))
    },
}  # fmt: skip
BATCH = 16


@dataclass
class Task:
    """A model with its evaluation and tuning inputs."""

    name: str
    loaded: LoadedModel
    spec: InputSpec
    evaluation: list[dict]  # batches
    tuning: list[dict]
    tuning_source: str  # a folder or .txt file with the tuning samples (for calibrating passes)
    data: str  # what the evaluation data is, in words
    timing_batch: dict = field(default_factory=dict)


# ------------------------------------------------------------------ data


def vision_task(workdir: Path) -> Task:
    from tokcomp import zoo

    loaded = load_model("zoo:dinov2-small")
    spec = loaded.input_spec
    evaluation = load_samples("zoo:images", "image")
    tuning = [Sample(item.image) for group in ("cifar10", "cifar100") for item in zoo.sample_images(group)]
    folder = workdir / "tuning_images"
    folder.mkdir()
    for i, sample in enumerate(tuning):
        sample.value.save(folder / f"{i:03d}.png")
    return Task(
        "zoo:dinov2-small",
        loaded,
        spec,
        list(make_batches(evaluation, loaded.processor, "image", BATCH)),
        list(make_batches(tuning, loaded.processor, "image", BATCH)),
        str(folder),
        f"zoo:images ({len(evaluation)} images, {spec.image_size} px), CLS token",
        _timing_batch(evaluation, loaded, spec),
    )


def text_task(workdir: Path, samples: int, length: int) -> Task:
    loaded = load_model("zoo:minilm-l6")
    tokenizer = loaded.processor
    long_enough = [s for s in load_samples("zoo:text", "text") if len(tokenizer(s.value)["input_ids"]) >= length]
    random.Random(0).shuffle(long_enough)
    evaluation, tuning = long_enough[:samples], long_enough[samples:]
    if not tuning:
        raise SystemExit(f"only {len(long_enough)} sentences have {length}+ tokens; ask for fewer --text-samples")
    spec = InputSpec("text", sequence_length=length)
    tuning_file = workdir / "tuning.txt"
    tuning_file.write_text("\n".join(s.value for s in tuning) + "\n")
    batches = list(make_batches(evaluation, tokenizer, "text", BATCH, length))
    assert all(b["attention_mask"].all() and b["input_ids"].shape[1] == length for b in batches)
    return Task(
        "zoo:minilm-l6",
        loaded,
        spec,
        batches,
        list(make_batches(tuning, tokenizer, "text", BATCH, length)),
        str(tuning_file),
        f"zoo:text, {len(evaluation)} held-out sentences with {length}+ tokens cut to {length}, "
        f"size-weighted mean pooling",
        _timing_batch(evaluation, loaded, spec),
    )


def _timing_batch(samples: list[Sample], loaded: LoadedModel, spec: InputSpec) -> dict:
    while len(samples) < BATCH:
        samples = samples + samples
    return next(make_batches(samples[:BATCH], loaded.processor, spec.modality, BATCH, spec.sequence_length))


# ------------------------------------------------------------------ budgets


def matched_schedule(geometry: Geometry, protected: int, cut: float) -> list[int]:
    """Per-block r whose FLOPs cut is closest to `cut`: [r + 1] * m + [r] * (L - m), fewest m on ties."""
    layers, tokens = geometry.num_layers, geometry.input_tokens
    best, best_gap = [0] * layers, None
    for r in range(tokens // 2 + 1):
        for extra in range(layers):
            schedule = [r + 1] * extra + [r] * (layers - extra)
            gap = abs(schedule_cut(geometry, protected, schedule) - cut)
            if best_gap is None or gap < best_gap - 1e-12:
                best, best_gap = schedule, gap
    return best


def _learned(settings: dict) -> bool:
    """Passes that choose their own schedule get the FLOPs target instead of the shared r list."""
    return settings["type"] not in FIXED_SCHEDULE and settings["type"] != RANDOM_DROP


def parse_cut(budget: str) -> float:
    return float(budget.strip().lstrip("-").rstrip("%")) / 100


def token_passes() -> list[str]:
    """Registered passes that take a FLOPs target (every token-reduction pass), ToMe first."""
    found = [name for name, cls in PASSES.items() if "target_flops" in cls.Config.model_fields]
    first = [name for name in ("tome", "token_transform", "prune", "evit", "zero_tprune") if name in found]
    return first + sorted(set(found) - set(first))


def schedule_cut(geometry: Geometry, protected: int, schedule: list[int]) -> float:
    counts = tokens_after_removals(schedule, geometry.input_tokens, protected, Reducer.limit)
    return 1 - model_macs(geometry, counts) / model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)


def row_specs(passes: list[str]) -> dict[str, dict]:
    rows = {}
    for name in passes:
        rows[name] = {"type": name}
        if name == "token_transform":
            rows.update(ABLATIONS)
    rows[RANDOM_DROP] = {"type": RANDOM_DROP}
    return rows


# ------------------------------------------------------------------ measuring


def compress(task: Task, settings: dict, budget: str, schedule: list[int]):
    """(model, pass metadata) for one row at one budget."""
    if settings["type"] == RANDOM_DROP:
        return _random_drop(task, schedule)
    model = copy.deepcopy(task.loaded.model)
    entry = {**settings, "target_flops": budget} if _learned(settings) else {**settings, "r": schedule}
    calibration = CalibrationSpec(data=task.tuning_source, samples=256, batch_size=BATCH)
    loaded = copy.copy(task.loaded)
    loaded.model = model
    ctx = PassContext(task.spec, seed=0, calibration=calibration, loaded=loaded)
    (record,) = run_passes(model, parse_pass_list([entry]), ctx)
    return model.eval(), record.metadata


def _random_drop(task: Task, schedule: list[int]):
    original = task.loaded.model
    adapter = find_adapter(original)
    geometry = adapter.geometry(original, task.spec)
    tokens = tokens_after_removals(schedule, geometry.input_tokens, adapter.protected_tokens(original), Reducer.limit)
    model = random_drop_like(original, geometry.input_tokens, tokens, seed=0)
    return model.eval(), {"tokens_per_layer": tokens, "gmacs": model_macs(geometry, tokens) / 1e9}


def embeddings(model, batches: list[dict], pooling: str) -> torch.Tensor:
    return torch.cat([model_outputs(model, batch, pooling)["embedding"] for batch in batches])


def cosine(model, batches, pooling, reference) -> dict:
    cos = F.cosine_similarity(embeddings(model, batches, pooling), reference, dim=-1)
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(), "samples": cos.numel()}


def run_task(task: Task, rows: dict[str, dict], budgets: list[str], repeats: int, time_all: bool) -> dict:
    original = task.loaded.model
    geometry = find_adapter(original).geometry(original, task.spec)
    protected = find_adapter(original).protected_tokens(original)
    dense_gmacs = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers) / 1e9
    reference = embeddings(original, task.evaluation, task.loaded.pooling)
    result = {"data": task.data, "input": vars(task.spec), "gmacs": dense_gmacs, "budgets": {}}
    timed_rows = set(rows) if time_all else {label for label in rows if label not in ABLATIONS and label != RANDOM_DROP}
    for budget in budgets:
        cut = parse_cut(budget)
        schedule = matched_schedule(geometry, protected, cut)
        models, entries = {}, {}
        for label, settings in rows.items():
            started = time.perf_counter()
            model, metadata = compress(task, settings, budget, schedule)
            achieved = 1 - metadata["gmacs"] / dense_gmacs
            entries[label] = {
                "pass": settings,
                "budget": {"target_flops": budget} if _learned(settings) else {"r": schedule},
                "tokens_per_layer": metadata["tokens_per_layer"],
                "gmacs": metadata["gmacs"],
                "flops_cut": achieved,
                "matched": abs(achieved - cut) <= 0.01,
                **cosine(model, task.evaluation, task.loaded.pooling, reference),
            }
            models[label] = model
            print(
                f"  {task.name} {budget} {label}: cos {entries[label]['cosine_mean']:.5f} "
                f"cut {achieved:.4f} ({time.perf_counter() - started:.1f}s)",
                flush=True,
            )
        timed = {label: m for label, m in models.items() if label in timed_rows}
        timings = _throughput(original, timed, task.timing_batch, repeats)
        for label, entry in entries.items():
            if label in timings:
                entry["speedup"] = timings[label]["items_per_s"] / timings["original"]["items_per_s"]
                entry["timing"] = timings[label]
        result["budgets"][budget] = {
            "target_cut": cut,
            "schedule": schedule,
            "schedule_cut": schedule_cut(geometry, protected, schedule),
            "original_timing": timings["original"],
            "rows": entries,
        }
    return result


MIN_TIMED_SECONDS = 0.25  # small workloads (16 short sentences) run several batches per timing


@torch.inference_mode()
def _throughput(original, models: dict, batch: dict, repeats: int) -> dict:
    started = time.perf_counter()
    original(**batch)
    calls = max(1, math.ceil(MIN_TIMED_SECONDS / (time.perf_counter() - started)))

    def runner(model):
        return lambda: [model(**batch) for _ in range(calls)]

    runners = {"original": runner(original), **{label: runner(m) for label, m in models.items()}}
    timings = interleaved_throughput(runners, BATCH * calls, repeats, warmup=1)
    return {label: {**t, "batches_per_timing": calls} for label, t in timings.items()}


def sweep(task: Task, budgets: list[str]) -> dict:
    """Token Transforming variants on the tuning data, to choose defaults without the evaluation data."""
    original = task.loaded.model
    geometry = find_adapter(original).geometry(original, task.spec)
    protected = find_adapter(original).protected_tokens(original)
    reference = embeddings(original, task.tuning, task.loaded.pooling)
    out = {}
    for budget in budgets:
        schedule = matched_schedule(geometry, protected, parse_cut(budget))
        for label, settings in SWEEP.items():
            model, _ = compress(task, settings, budget, schedule)
            score = cosine(model, task.tuning, task.loaded.pooling, reference)["cosine_mean"]
            out.setdefault(label, {})[budget] = score
            print(f"  sweep {task.name} {budget} {label}: {out[label][budget]:.5f}", flush=True)
    return out


# ------------------------------------------------------------------ writing


def verdict(result: dict, budgets: list[str]) -> list[str]:
    lines = []
    for budget in budgets:
        rows = result["budgets"][budget]["rows"]
        if "token_transform" not in rows or "tome" not in rows:
            continue
        gap = rows["token_transform"]["cosine_mean"] - rows["tome"]["cosine_mean"]
        word = "beats" if gap > 0 else "does not beat"
        lines.append(f"{budget}: Token Transforming {word} ToMe by {gap:+.4f} cosine")
    return lines


def write_results(results: dict, info: dict, settings: dict, budgets: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "settings": settings, "models": results}
    (RESULTS / "reducers.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Token reducers at equal FLOPs, training-free",
        "",
        f"Machine: {info['cpu']}, {info['threads']} threads, torch {info['torch']}. "
        "Generated by `benchmarks/reducer_table.py` (one run; speed ratios are interleaved in that run).",
        "",
        "Each cell: mean cosine of the pooled embedding to the original model's (min over samples in "
        "brackets) / CPU throughput ratio compressed:original (batch 16, median of "
        f"{settings['repeats']} interleaved repeats). FLOPs: GMACs, DiffRate's convention. Fixed-schedule "
        "passes share one per-block r list per budget, so their token counts are identical; a row "
        "whose own FLOPs cut misses the budget by more than 1 point says so. No training anywhere.",
        "",
        "Rows: `token_transform` at its defaults (ToMe's alternating targets, hidden-state cosine, "
        "k = 1: every removed token moved whole); `k=2 (many-to-many)` the same with each removed token "
        "spread over its 2 best targets at temperature 0.01; "
        "`on keys` the same on ToMe's key metric; `random drop` keeps random tokens at the same "
        "counts. Learned-schedule passes (DiffRate) calibrate on tuning data (CIFAR images, "
        "the zoo:text sentences not held out), never on the evaluation data.",
    ]
    for model_name, result in results.items():
        lines += ["", f"## {model_name}", "", f"Data: {result['data']}. Original: {result['gmacs']:.3f} GMACs.", ""]
        header = "| reducer | " + " | ".join(f"{b} FLOPs" for b in budgets) + " |"
        lines += [header, "|---|" + "---|" * len(budgets)]
        labels = list(next(iter(result["budgets"].values()))["rows"])
        for label in labels:
            cells = []
            for budget in budgets:
                row = result["budgets"][budget]["rows"][label]
                flag = "" if row["matched"] else f" (cut {row['flops_cut']:.1%}, not matched)"
                speed = f"{row['speedup']:.2f}x" if "speedup" in row else "not timed"
                cells.append(f"{row['cosine_mean']:.4f} ({row['cosine_min']:.3f}) / {speed}{flag}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        cuts = [
            f"{b}: r = {result['budgets'][b]['schedule']}, cut {result['budgets'][b]['schedule_cut']:.2%}"
            for b in budgets
        ]
        lines += ["", "Schedules: " + "; ".join(cuts) + "."]
        lines += [""] + [f"- {line}" for line in verdict(result, budgets)]
    (RESULTS / "reducers.md").write_text("\n".join(lines) + "\n")


def sweep_markdown(results: dict, budgets: list[str]) -> str:
    lines = []
    for model_name, table in results.items():
        lines += ["", f"### {model_name} (tuning data)", "", "| variant | " + " | ".join(budgets) + " |"]
        lines.append("|---|" + "---|" * len(budgets))
        lines += [f"| {label} | " + " | ".join(f"{v[b]:.4f}" for b in budgets) + " |" for label, v in table.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", help="comma-separated pass types (default: every pass taking target_flops)")
    parser.add_argument("--budgets", default="-20%,-35%,-50%", help="comma-separated FLOPs cuts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-samples", type=int, default=256)
    parser.add_argument("--text-length", type=int, default=16)
    parser.add_argument("--models", default="vision,text", help="vision, text or both")
    parser.add_argument("--time-all", action="store_true", help="also time the ablation and random-drop rows")
    parser.add_argument("--sweep", action="store_true", help="score Token Transforming variants on tuning data only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [b.strip() for b in args.budgets.split(",")]
    passes = args.passes.split(",") if args.passes else token_passes()
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise SystemExit(f"unknown pass types {unknown}; registered: {', '.join(sorted(PASSES))}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tasks = []
        if "vision" in args.models:
            tasks.append(vision_task(workdir))
        if "text" in args.models:
            tasks.append(text_task(workdir, args.text_samples, args.text_length))
        if args.sweep:
            sweep_budgets = [b for b in budgets if parse_cut(b) >= 0.35] or budgets
            print(sweep_markdown({t.name: sweep(t, sweep_budgets) for t in tasks}, sweep_budgets))
            return
        rows = row_specs(passes)
        results = {task.name: run_task(task, rows, budgets, args.repeats, args.time_all) for task in tasks}
    settings = {
        "passes": passes,
        "budgets": budgets,
        "repeats": args.repeats,
        "time_all": args.time_all,
        "batch": BATCH,
        "text_samples": args.text_samples,
        "text_length": args.text_length,
        "seconds": round(time.perf_counter() - started),
    }
    write_results(results, machine(), settings, budgets)
    print((RESULTS / "reducers.md").read_text())


if __name__ == "__main__":
    main()
