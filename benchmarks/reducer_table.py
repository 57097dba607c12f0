"""Every token reducer at equal FLOPs on DINOv2-S and MiniLM-L6: fidelity on held-out data.

    python benchmarks/reducer_table.py [--passes tome,token_transform,prune,evit]
        [--budgets=-20%,-35%,-50%] [--images N] [--text-per-bucket 64]
    python benchmarks/reducer_table.py --sweep     # Token Transforming variants on calibration data only

Rows: every registered pass whose config accepts `target_flops` (so a new token pass such
as `diffrate` joins by re-running), plus two ablations of Token Transforming (k = 2, and
ToMe's key metric), DiffRate with learned per-block merge rules, and random dropping.
Columns: three FLOPs cuts.

- Budget: passes with a fixed schedule (FIXED_SCHEDULE) all get the same per-block r list at the
  reference input, the one whose FLOPs land closest to the cut, so they keep exactly the same
  tokens after every block. Other passes (learned schedules) get `target_flops` and calibrate on
  the calibration split; every row prints the GMACs it runs at, and a row whose GMACs differ from
  ToMe's by more than 0.5% is flagged (no matching is attempted here).
- Data: the built-in evaluation split (tokcomp.zoo.eval_sets; calibration and evaluation are
  disjoint by a hash of each item's name). DINOv2: the zoo:photos photographs at 224 px, CLS
  token. MiniLM: held-out English prose (zoo:prose), bucketed by real length (8-16, 17-32, 33-64,
  65-128 tokens) and fed in dynamically padded batches; the reducers' budgets are rates of each
  input's own tokens, set at the 128-token reference input; size-weighted mean pooling.
- Fidelity: per-sample cosine of the pooled embedding to the original model's on the same inputs.
  Every row is compared with ToMe on the same samples: mean difference, seeded bootstrap 95%
  interval, wins/ties/losses, and "tie" when the interval contains 0 (tokcomp.analysis.paired).
- Claims: at every budget, each learned row against the best training-free row (paired, same
  samples), and Token Transforming against ToMe.
- No timing: this table is fidelity only (speed is measured by benchmarks/throughput_cpu.py).

Writes benchmarks/results/reducers.{md,json} after every row (a partial run leaves a usable
table); models not run this time keep their committed results.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_results as write_result_files  # noqa: E402
from tokcomp.analysis.baselines import random_drop_like  # noqa: E402
from tokcomp.analysis.fidelity import model_outputs  # noqa: E402
from tokcomp.analysis.flops import model_macs  # noqa: E402
from tokcomp.analysis.paired import compare_paired  # noqa: E402
from tokcomp.data import Sample, load_samples, make_batches  # noqa: E402
from tokcomp.passes import PASSES  # noqa: E402
from tokcomp.pipeline import PassContext, run_passes  # noqa: E402
from tokcomp.recipe import CalibrationSpec, parse_pass_list  # noqa: E402
from tokcomp.reducers.base import Reducer  # noqa: E402
from tokcomp.reducers.rate import tokens_after_removals  # noqa: E402
from tokcomp.reducers.schedule import tokens_after_layers  # noqa: E402
from tokcomp.sources import LoadedModel, load_model  # noqa: E402
from tokcomp.surgery import find_adapter, token_blocks  # noqa: E402
from tokcomp.surgery.adapters.base import Geometry, InputSpec  # noqa: E402
from tokcomp.zoo.eval_sets import token_buckets  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIXED_SCHEDULE = {"tome", "token_transform", "prune", "evit", "zero_tprune"}
ABLATIONS = {  # extra rows after `token_transform`: label -> pass settings
    "token_transform k=2 (many-to-many)": {"type": "token_transform", "k": 2},
    "token_transform on keys": {"type": "token_transform", "metric": "keys"},
}
LEARNED_RULES = "diffrate, learned merge rules"
# DiffRate rows, in this order. merge_rule learned runs DiffRate's count search exactly as the default
# (bipartite) does, same seed and data, then chooses each block's rule with the counts fixed; so the
# default's row applies those counts with bipartite merging everywhere (`counts_from`) instead of
# running the same search again (about 7 minutes a budget on 2 shared cores).
DIFFRATE_ROWS = {
    LEARNED_RULES: {"type": "diffrate", "merge_rule": "learned"},
    "diffrate": {"type": "diffrate", "counts_from": LEARNED_RULES},
}
RANDOM_DROP = "random drop (baseline)"  # same token counts, uniformly random tokens kept
REFERENCE = "tome"  # every row is compared with this one, sample by sample
GMACS_TOLERANCE = 0.005  # a row whose GMACs differ from the reference row's by more is flagged
TEXT_REFERENCE_LENGTH = 128  # MiniLM budgets are set at this input, applied as rates to every input
SWEEP = {  # Token Transforming variants scored on calibration data (--sweep)
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
    """A model with its evaluation groups (all photos, or one group per text length bucket) and tuning inputs."""

    name: str
    loaded: LoadedModel
    spec: InputSpec  # the reference input the budgets are set at
    groups: dict[str, list[dict]]  # group label -> batches
    group_lengths: dict[str, list[int]]  # text only: real token count of every sample, for per-input FLOPs
    tuning: list[dict]
    tuning_source: str  # a data id with the calibration samples (for calibrating passes)
    data: str  # what the evaluation data is, in words


# ------------------------------------------------------------------ data


def vision_task(images: int | None) -> Task:
    loaded = load_model("zoo:dinov2-small")
    spec = loaded.input_spec
    evaluation = load_samples("zoo:photos", "image", limit=images)
    tuning = load_samples("zoo:photos-calib", "image")
    return Task(
        "zoo:dinov2-small",
        loaded,
        spec,
        {"all": list(make_batches(evaluation, loaded.processor, "image", BATCH))},
        {},
        list(make_batches(tuning, loaded.processor, "image", BATCH)),
        "zoo:photos-calib",
        f"zoo:photos, the evaluation split of the built-in photographs ({len(evaluation)} images, "
        f"{spec.image_size} px), CLS token; calibration: zoo:photos-calib ({len(tuning)} images)",
    )


def text_task(per_bucket: int) -> Task:
    loaded = load_model("zoo:minilm-l6")
    tokenizer = loaded.processor
    texts = [s.value for s in load_samples("zoo:prose:en", "text")]

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    groups, lengths = {}, {}
    for label, bucket in token_buckets(texts, count).items():
        chosen = random.Random(0).sample(bucket, min(per_bucket, len(bucket)))
        chosen.sort(key=count)  # batches of similar lengths: little padding
        groups[label] = [
            dict(tokenizer(chosen[i : i + BATCH], padding=True, return_tensors="pt"))
            for i in range(0, len(chosen), BATCH)
        ]
        lengths[label] = [count(t) for t in chosen]
    spec = InputSpec("text", sequence_length=TEXT_REFERENCE_LENGTH)
    tuning = [Sample(s.value) for s in load_samples("zoo:prose-calib:en", "text", limit=256)]
    counts = ", ".join(f"{label}: {len(n)}" for label, n in lengths.items())
    return Task(
        "zoo:minilm-l6",
        loaded,
        spec,
        groups,
        lengths,
        list(make_batches(tuning, tokenizer, "text", BATCH, TEXT_REFERENCE_LENGTH)),
        "zoo:prose-calib:en",
        f"zoo:prose:en, held-out English prose (Debian Reference) under dynamic padding, by real length in "
        f"tokens ({counts} sentences); budgets set at {TEXT_REFERENCE_LENGTH} tokens, applied as rates; "
        "size-weighted mean pooling; calibration: zoo:prose-calib:en",
    )


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
        if name == "diffrate":
            rows.update(DIFFRATE_ROWS)
            continue
        rows[name] = {"type": name}
        if name == "token_transform":
            rows.update(ABLATIONS)
    rows[RANDOM_DROP] = {"type": RANDOM_DROP}
    return rows


# ------------------------------------------------------------------ measuring


def compress(task: Task, settings: dict, budget: str, schedule: list[int], done: dict[str, dict] | None = None):
    """(model, pass metadata) for one row at one budget; `done`: pass metadata of the rows run before."""
    if settings["type"] == RANDOM_DROP:
        return _random_drop(task, schedule)
    model = copy.deepcopy(task.loaded.model)
    entry = {**settings, "target_flops": budget} if _learned(settings) else {**settings, "r": schedule}
    if "counts_from" in settings:  # the counts another row's search found at this budget (DIFFRATE_ROWS)
        found = (done or {})[settings["counts_from"]]
        entry = {"type": settings["type"], "schedule": {"prune": found["prune_kept"], "merge": found["merge_kept"]}}
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


def per_sample_cosines(model, task: Task, references: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    pooling = task.loaded.pooling
    return {
        label: F.cosine_similarity(embeddings(model, batches, pooling), references[label], dim=-1).tolist()
        for label, batches in task.groups.items()
    }


def input_flops_cuts(model, task: Task) -> dict[str, float]:
    """Text: mean FLOPs cut over each bucket's inputs, each at its own length (the budgets are rates)."""
    reducers = [block.reducer for block in token_blocks(model)]
    adapter = find_adapter(task.loaded.model)
    out = {}
    for label, lengths in task.group_lengths.items():
        cuts = []
        for n in lengths:
            geometry = adapter.geometry(task.loaded.model, InputSpec("text", sequence_length=n))
            dense = model_macs(geometry, [n] * geometry.num_layers)
            cuts.append(1 - model_macs(geometry, tokens_after_layers(n, reducers)) / dense)
        out[label] = sum(cuts) / len(cuts)
    return out


def run_task(task: Task, rows: dict[str, dict], budgets: list[str], on_row=lambda result: None) -> dict:
    """Every row at every budget; `on_row(result so far)` after each row (partial results get written)."""
    original = task.loaded.model
    geometry = find_adapter(original).geometry(original, task.spec)
    protected = find_adapter(original).protected_tokens(original)
    dense_gmacs = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers) / 1e9
    with torch.inference_mode():
        references = {label: embeddings(original, b, task.loaded.pooling) for label, b in task.groups.items()}
    result = {
        "data": task.data,
        "input": vars(task.spec),
        "gmacs": dense_gmacs,
        "groups": {label: int(ref.shape[0]) for label, ref in references.items()},
        "budgets": {},
    }
    for budget in budgets:
        cut = parse_cut(budget)
        schedule = matched_schedule(geometry, protected, cut)
        entries, scores, done = {}, {}, {}
        result["budgets"][budget] = {
            "target_cut": cut,
            "schedule": schedule,
            "schedule_cut": schedule_cut(geometry, protected, schedule),
            "rows": entries,
        }
        for label, settings in rows.items():
            started = time.perf_counter()
            model, metadata = compress(task, settings, budget, schedule, done)
            done[label] = metadata
            with torch.inference_mode():
                scores[label] = per_sample_cosines(model, task, references)
            achieved = 1 - metadata["gmacs"] / dense_gmacs
            entries[label] = {
                "pass": settings,
                "budget": {"target_flops": budget} if _learned(settings) else {"r": schedule},
                "tokens_per_layer": metadata["tokens_per_layer"],
                "gmacs": metadata["gmacs"],
                "flops_cut": achieved,
                "matched": abs(achieved - cut) <= 0.01,
                "groups": {
                    group: {"cosine_mean": sum(v) / len(v), "cosine_min": min(v), "samples": len(v)}
                    for group, v in scores[label].items()
                },
            }
            if task.group_lengths:
                for group, value in input_flops_cuts(model, task).items():
                    entries[label]["groups"][group]["input_flops_cut"] = value
            # the headline cosine: over every evaluation sample (all buckets together for text)
            every = [c for v in scores[label].values() for c in v]
            entries[label].update(cosine_mean=sum(every) / len(every), cosine_min=min(every), samples=len(every))
            print(
                f"  {task.name} {budget} {label}: cos {entries[label]['cosine_mean']:.5f} "
                f"GMACs {metadata['gmacs']:.4f} cut {achieved:.4f} ({time.perf_counter() - started:.1f}s)",
                flush=True,
            )
            if metadata.get("merge_rules"):
                entries[label]["merge_rules"] = metadata["merge_rules"]
            if "report" in metadata:
                report = metadata["report"]
                entries[label]["search_seconds"] = report.get("search_seconds")
                if "merge_choice" in report:  # calibration loss: plain search, its counts with bipartite, chosen rules
                    entries[label]["calibration_loss"] = {
                        key: report["merge_choice"][key] for key in ("search_score", "start_score", "score")
                    }
            add_comparisons(entries, scores)
            result["budgets"][budget]["claims"] = claims(entries, scores, rows)
            on_row(result)
    return result


def add_comparisons(entries: dict[str, dict], scores: dict[str, dict[str, list[float]]]) -> None:
    """Paired comparison of every row with the reference row (ToMe), per group and over all samples."""
    if REFERENCE not in entries:
        return
    reference_gmacs = entries[REFERENCE]["gmacs"]
    for label, entry in entries.items():
        entry["gmacs_vs_tome"] = entry["gmacs"] / reference_gmacs - 1
        entry["gmacs_matched_to_tome"] = abs(entry["gmacs_vs_tome"]) <= GMACS_TOLERANCE
        if label == REFERENCE:
            continue
        for group, values in scores[label].items():
            entry["groups"][group]["vs_tome"] = compare_paired(values, scores[REFERENCE][group]).as_dict()
        every = [c for v in scores[label].values() for c in v]
        every_reference = [c for v in scores[REFERENCE].values() for c in v]
        entry["vs_tome"] = compare_paired(every, every_reference).as_dict()


def claims(entries: dict[str, dict], scores: dict[str, dict[str, list[float]]], rows: dict[str, dict]) -> list[dict]:
    """Each learned row vs the best training-free row, and Token Transforming vs ToMe: paired, same samples."""

    def every(label: str) -> list[float]:
        return [c for v in scores[label].values() for c in v]

    free = [label for label in entries if not _learned(rows[label]) and rows[label]["type"] != RANDOM_DROP]
    out = []
    if free:
        best = max(free, key=lambda label: entries[label]["cosine_mean"])
        for label in entries:
            if _learned(rows[label]):
                out.append({"claim": f"{label} >= best training-free", "a": label, "b": best,
                            **compare_paired(every(label), every(best)).as_dict()})  # fmt: skip
    if "token_transform" in entries and REFERENCE in entries:
        out.append({"claim": "token_transform >= tome", "a": "token_transform", "b": REFERENCE,
                    **compare_paired(every("token_transform"), every(REFERENCE)).as_dict()})  # fmt: skip
    return out


def sweep(task: Task, budgets: list[str], match: str = "") -> dict:
    """Token Transforming variants on the calibration data, to choose defaults without the evaluation data.

    `match`: only the variants whose label contains it (and ToMe).
    """
    original = task.loaded.model
    geometry = find_adapter(original).geometry(original, task.spec)
    protected = find_adapter(original).protected_tokens(original)
    with torch.inference_mode():
        reference = embeddings(original, task.tuning, task.loaded.pooling)
    out = {}
    for budget in budgets:
        schedule = matched_schedule(geometry, protected, parse_cut(budget))
        for label, settings in SWEEP.items():
            if match not in label and label != REFERENCE:
                continue
            model, _ = compress(task, settings, budget, schedule)
            with torch.inference_mode():
                cos = F.cosine_similarity(embeddings(model, task.tuning, task.loaded.pooling), reference, dim=-1)
            out.setdefault(label, {})[budget] = cos.mean().item()
            print(f"  sweep {task.name} {budget} {label}: {out[label][budget]:.5f}", flush=True)
    return out


# ------------------------------------------------------------------ writing


def _verdict_word(comparison: dict, label: str) -> str:
    return {"A better": f"{label} better", "B better": "ToMe better", "tie": "tie"}[comparison["verdict"]]


def cell(row: dict, group: dict | None = None) -> str:
    """One table cell: cosine (min), GMACs, and the paired difference to ToMe with its interval."""
    source = group if group is not None else row
    text = f"{source['cosine_mean']:.4f} ({source['cosine_min']:.3f}), {row['gmacs']:.3f} GMACs"
    if not row.get("gmacs_matched_to_tome", True):
        text += f" **GMACs {row['gmacs_vs_tome']:+.1%} vs ToMe**"
    comparison = source.get("vs_tome")
    if comparison:
        low, high = comparison["interval"]
        text += (
            f"; vs ToMe {comparison['mean_difference']:+.4f} [{low:+.4f}, {high:+.4f}] "
            f"{comparison['wins']}/{comparison['ties']}/{comparison['losses']} {comparison['verdict'].split()[0]}"
        )
    return text


def claim_line(claim: dict) -> str:
    low, high = claim["interval"]
    verdict = {"A better": "holds", "B better": "fails", "tie": "tie"}[claim["verdict"]]
    return (
        f"{claim['a']} vs {claim['b']}: {claim['mean_difference']:+.4f} [{low:+.4f}, {high:+.4f}] "
        f"{claim['wins']}/{claim['ties']}/{claim['losses']}, {verdict}"
    )


def previous_models() -> dict:
    """The committed results per model, each with the settings of the run that produced it."""
    path = RESULTS / "reducers.json"
    if not path.exists():
        return {}
    payload = json.loads(path.read_text())
    return {name: {"settings": payload.get("settings", {}), **model} for name, model in payload["models"].items()}


def write_results(results: dict, info: dict, settings: dict) -> None:
    """reducers.{json,md}; `results` may be partial (rows or budgets missing: "-")."""
    payload = {"machine": info, "settings": settings, "models": results}
    commands = dict.fromkeys(
        budget.get("settings", model.get("settings", settings)).get("command", "?")
        for model in results.values()
        for budget in model["budgets"].values()
    )
    lines = [
        "# Token reducers at equal FLOPs on held-out data",
        "",
        f"Generated by `benchmarks/reducer_table.py` ({'; '.join(commands)}); fidelity only, no timing.",
        "",
        "Each cell: mean cosine of the pooled embedding to the original model's (min over samples in "
        "brackets), the GMACs the row runs at, then the paired comparison with ToMe on the same samples: "
        "mean difference [bootstrap 95% interval] wins/ties/losses and the verdict (`A` = this row better, "
        "`B` = ToMe better, `tie` = the interval contains 0). A row whose GMACs differ from ToMe's by more "
        "than 0.5% is flagged in bold: its comparison is not at equal compute. FLOPs: GMACs at the reference "
        "input, DiffRate's convention. Fixed-schedule passes share one per-block r list per budget, so their "
        "token counts are identical.",
        "",
        "Rows: `token_transform` at its defaults; `k=2 (many-to-many)` the same with each removed token "
        "spread over its 2 best targets; `on keys` the same on ToMe's key metric; `random drop` keeps "
        "random tokens at the same counts. Only the DiffRate rows learn (no weights change): `diffrate` its "
        "per-block counts at the FLOPs target (fitted to within 0.5%), `diffrate, learned merge rules` the "
        "same counts and then each block's merge rule (bipartite on hidden states or keys, or spreading over "
        "2 targets), both on the calibration split, which never overlaps the evaluation split. Every other "
        "row is training-free.",
    ]
    for model_name, result in results.items():
        budgets = list(result["budgets"])
        lines += ["", f"## {model_name}", "", f"Data: {result['data']}. Original: {result['gmacs']:.3f} GMACs.", ""]
        header = "| reducer | " + " | ".join(f"{b} FLOPs" for b in budgets) + " |"
        labels = list(dict.fromkeys(label for b in budgets for label in result["budgets"][b]["rows"]))

        def row_cell(budget: str, label: str, group: str | None = None) -> str:
            row = result["budgets"][budget]["rows"].get(label)
            if row is None:
                return "-"
            if group is None:
                return cell(row)
            text = cell(row, row["groups"][group])
            if "input_flops_cut" in row["groups"][group]:
                text += f"; cut at own length {row['groups'][group]['input_flops_cut']:.1%}"
            return text

        lines += [header, "|---|" + "---|" * len(budgets)]
        lines += [f"| {label} | " + " | ".join(row_cell(b, label) for b in budgets) + " |" for label in labels]
        groups = list(result["groups"])
        if len(groups) > 1:
            for group in groups:
                lines += ["", f"### {model_name}, inputs of {group} tokens ({result['groups'][group]} sentences)", ""]
                lines += [header, "|---|" + "---|" * len(budgets)]
                lines += [
                    f"| {label} | " + " | ".join(row_cell(b, label, group) for b in budgets) + " |" for label in labels
                ]
        claimed = [(b, c) for b in budgets for c in result["budgets"][b].get("claims", [])]
        if claimed:
            lines += ["", "Claims (paired over every evaluation sample: difference [95% interval] wins/ties/losses; "
                      "\"tie\" when the interval holds 0):", ""]  # fmt: skip
            lines += [f"- {b}: {claim_line(c)}" for b, c in claimed]
        rules = [
            f"{label} at {b}: {', '.join(row['merge_rules'])}"
            for b in budgets
            for label, row in result["budgets"][b]["rows"].items()
            if row.get("merge_rules")
        ]
        if rules:
            lines += ["", "Learned merge rules per block: " + "; ".join(rules) + "."]
        cuts = [
            f"{b}: r = {result['budgets'][b]['schedule']}, cut {result['budgets'][b]['schedule_cut']:.2%}"
            for b in budgets
        ]
        lines += ["", "Schedules at the reference input: " + "; ".join(cuts) + "."]
        flagged = [
            f"{label} at {b} ({row['gmacs']:.3f} vs {result['budgets'][b]['rows'][REFERENCE]['gmacs']:.3f} GMACs)"
            for b in budgets
            for label, row in result["budgets"][b]["rows"].items()
            if not row.get("gmacs_matched_to_tome", True)
        ]
        if flagged:
            lines += ["", "Not at ToMe's GMACs (more than 0.5% apart): " + "; ".join(flagged) + "."]
    write_result_files(RESULTS, "reducers", payload, "\n".join(lines) + "\n", show=False)


def sweep_markdown(results: dict, budgets: list[str]) -> str:
    lines = []
    for model_name, table in results.items():
        lines += ["", f"### {model_name} (calibration data)", "", "| variant | " + " | ".join(budgets) + " |"]
        lines.append("|---|" + "---|" * len(budgets))
        lines += [f"| {label} | " + " | ".join(f"{v[b]:.4f}" for b in budgets) + " |" for label, v in table.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", help="comma-separated pass types (default: every pass taking target_flops)")
    parser.add_argument("--budgets", default="-20%,-35%,-50%", help="comma-separated FLOPs cuts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, help="evaluate on a seeded subset of this many photos (default: all)")
    parser.add_argument("--text-per-bucket", type=int, default=64, help="sentences per length bucket")
    parser.add_argument("--models", default="vision,text", help="vision, text or both")
    parser.add_argument("--sweep", action="store_true", help="score Token Transforming variants on calibration data")
    parser.add_argument("--sweep-match", default="", help="--sweep: only variants whose label contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [b.strip() for b in args.budgets.split(",")]
    passes = args.passes.split(",") if args.passes else token_passes()
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise SystemExit(f"unknown pass types {unknown}; registered: {', '.join(sorted(PASSES))}")
    started = time.perf_counter()
    tasks = []
    if "vision" in args.models:
        tasks.append(vision_task(args.images))
    if "text" in args.models:
        tasks.append(text_task(args.text_per_bucket))
    if args.sweep:
        print(sweep_markdown({t.name: sweep(t, budgets, args.sweep_match) for t in tasks}, budgets))
        return
    rows = row_specs(passes)
    settings = {
        "command": "python benchmarks/reducer_table.py " + " ".join(sys.argv[1:]),
        "passes": passes,
        "budgets": budgets,
        "batch": BATCH,
        "images": args.images,
        "text_per_bucket": args.text_per_bucket,
    }
    previous = previous_models()
    results = {name: model for name, model in previous.items() if name not in {t.name for t in tasks}}

    def save(name: str, result: dict) -> None:
        """Write what exists: this run's budgets, and the committed ones this run does not redo."""
        before = previous.get(name, {})
        kept = {  # each budget records the settings of the run that measured it
            b: {"settings": before.get("settings", {}), **v} for b, v in before.get("budgets", {}).items() if b not in budgets
        }
        for budget in result["budgets"].values():
            budget["settings"] = {**settings, "seconds": round(time.perf_counter() - started)}
        merged = dict(sorted({**kept, **result["budgets"]}.items(), key=lambda item: parse_cut(item[0])))
        results[name] = {**result, "budgets": merged}
        write_results(results, machine(), settings)

    for task in tasks:
        save(task.name, run_task(task, rows, budgets, on_row=lambda result, name=task.name: save(name, result)))
    print((RESULTS / "reducers.md").read_text())


if __name__ == "__main__":
    main()
