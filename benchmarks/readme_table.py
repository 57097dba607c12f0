"""Regenerate README.md's results section from the committed benchmark outputs.

    python benchmarks/readme_table.py               # rewrite README.md between the results markers
    python benchmarks/readme_table.py --check       # exit 1 when README.md is out of date
    python benchmarks/readme_table.py --merge-map   # also redraw docs/images/merge_map_dinov2_small.png

Only the text between `<!-- results:start -->` and `<!-- results:end -->` changes.

Every benchmarks/results/*.json is read the same way, so a new benchmark file shows
up without editing this script. Rows are found anywhere in a file: as the elements of
a list, or as the values of a `rows` / `results` / `reducers` / `methods` object
keyed by a row name. Objects keyed under `models` / `budgets` give their keys as the
model / budget of everything inside. A row needs an identity (a reducer, a recipe, or
a row name) and at least one number below; keys are matched by the first alias found:

    reducer      reducer | method | pass_type | pass | pass.type   ("none"/"original"/"baseline"/"dense" = the
                 uncompressed model); a row that names a `recipe` instead gets that recipe's token pass
    budget       budget | target_flops | target | setting | r, or `keep` (a kept share, shown "keep 0.5")    (or the enclosing `budgets` key, or the recipe's)
    model        model | source                                 (or the enclosing `models` key / `model` field)
    gmacs        gmacs | compressed_gmacs | flops_gmacs | gflops | flops (a number) | flops.compressed
    flops_ratio  flops_ratio | ratio | flops.ratio   (compressed / original; a value > 1 is read as original /
                 compressed and inverted) | flops_cut | cut   (1 - ratio)
    cosine       cosine_mean | cosine | fidelity.cosine_mean
    agreement    top1_agreement | agreement | fidelity.top1_agreement
    accuracy     top1_accuracy | accuracy | top1 | accuracy.compressed.top1
    needles      needle_accuracy (needle retrieval written as continuations, decoder LLMs)
    speed-up     speedup | speed_up | cpu_speedup | gpu_speedup, or derived against the file's baseline row from
                 throughput | images_per_s | samples_per_s | items_per_s (row / baseline) or latency_ms (baseline / row)
    paired       vs_tome.mean_difference, with vs_tome.interval.0 / .1 (list elements by index): the row's cosine
                 minus ToMe's on the same samples and its bootstrap 95% interval; "tie" when the interval holds 0

A speed-up's column is its device and runtime. The device comes from the row, an
enclosing object, the file name (cpu / gpu / cuda, e.g. onnx_cpu.json), or else the
file's `machine` object (GPU when it names one, CPU otherwise); a `runtime` other than
eager PyTorch (e.g. onnxruntime) gets its own column. `"matched": false` marks a
budget the reducer could not meet. Rows for the same (model, reducer, budget) from
several files are merged: one file may bring fidelity and FLOPs, another the speed. A file
whose top-level `scope` names a condition the others do not share (e.g. "8,192-token
prompts") keeps its rows apart: the scope is appended to each row's budget.
A file without any such row is linked under "Other results".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"
MERGE_MAP = Path("docs/images/merge_map_dinov2_small.png")
MERGE_MAP_FACTS = MERGE_MAP.with_suffix(".json")
BASELINES = {"none", "original", "baseline", "dense", "uncompressed"}
EAGER = {None, "", "eager", "pytorch", "torch"}
CONTEXT_KEYS = ("model", "recipe", "device", "runtime", "batch_size", "batch", "threads", "dtype")
MACHINE_KEYS = ("machine", "hardware", "environment")  # objects describing where a file was measured
KEYED = {
    "models": "model",
    "budgets": "budget",
    "rows": "name",
    "results": "name",
    "reducers": "name",
    "methods": "name",
}
ROW_HOLDERS = {"rows", "results", "reducers", "methods"}  # keyed objects whose values are rows

ALIASES: dict[str, tuple[str, ...]] = {
    "reducer": ("reducer", "method", "pass_type", "pass", "pass.type"),
    "budget": ("budget", "target_flops", "target", "setting", "r"),
    "model": ("model", "source"),
    "gmacs": ("gmacs", "compressed_gmacs", "flops_gmacs", "gflops", "flops", "flops.compressed"),
    "flops_ratio": ("flops_ratio", "ratio", "flops.ratio"),
    "flops_cut": ("flops_cut", "cut"),
    "cosine": ("cosine_mean", "cosine", "fidelity.cosine_mean"),
    "agreement": ("top1_agreement", "agreement", "fidelity.top1_agreement"),
    "accuracy": ("top1_accuracy", "accuracy", "top1", "accuracy.compressed.top1"),
    "needles": ("needle_accuracy",),
    "speedup": ("speedup", "speed_up", "cpu_speedup", "speedup_cpu", "gpu_speedup", "speedup_gpu"),
    "throughput": ("throughput", "images_per_s", "samples_per_s", "items_per_s"),
    "latency_ms": ("latency_ms", "latency"),
    "paired_difference": ("vs_tome.mean_difference",),
    "paired_low": ("vs_tome.interval.0",),
    "paired_high": ("vs_tome.interval.1",),
    "device": ("device",),
    "runtime": ("runtime",),
}
NUMBERS = (
    "gmacs", "flops_ratio", "flops_cut", "cosine", "agreement", "accuracy", "needles", "speedup", "throughput",
    "latency_ms", "paired_difference", "paired_low", "paired_high",
)  # fmt: skip
METRICS = (  # what a table row shows besides speed
    "gmacs", "flops_ratio", "cosine", "agreement", "accuracy", "needles", "paired_difference", "paired_low",
    "paired_high",
)  # fmt: skip


# ------------------------------------------------------------------ reading


def _lookup(row: dict, dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]  # "interval.0": the first element of a list
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def _first(row: dict, name: str, numeric: bool) -> Any:
    for alias in ALIASES[name]:
        value = _lookup(row, alias)
        if isinstance(value, bool) or value is None:
            continue
        if numeric and isinstance(value, (int, float)):
            return float(value)
        if not numeric and isinstance(value, (str, int, float)):
            return value
    return None


def _scalars(data: dict, keys) -> dict[str, Any]:
    return {k: data[k] for k in keys if isinstance(data.get(k), (str, int, float)) and not isinstance(data[k], bool)}


def _is_row(item: dict, context: dict) -> bool:
    named = _first(item, "reducer", False) is not None or "recipe" in item or "recipe" in context or "name" in context
    return named and any(_first(item, n, True) is not None for n in NUMBERS)


def _rows(data: Any, context: dict, candidate: bool = False) -> Iterator[tuple[dict, dict]]:
    """(row, context from enclosing objects); only list elements and row-holder values can be rows."""
    if isinstance(data, list):
        for item in data:
            yield from _rows(item, context, candidate=True)
        return
    if not isinstance(data, dict):
        return
    if candidate and _is_row(data, context):
        yield data, context
        return
    inner = {**context, **_scalars(data, CONTEXT_KEYS)}
    for key, value in data.items():
        if key in KEYED and isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for child_key, child in value.items():
                yield from _rows(child, {**inner, KEYED[key]: child_key}, candidate=key in ROW_HOLDERS)
        elif isinstance(value, (dict, list)):
            yield from _rows(value, inner)


def _file_device(data: Any, filename: str) -> str | None:
    text = filename.lower()
    if "cuda" in text or "gpu" in text:
        return "gpu"
    if "cpu" in text:
        return "cpu"
    for key in MACHINE_KEYS:
        machine = data.get(key) if isinstance(data, dict) else None
        if isinstance(machine, dict):
            described = json.dumps(machine).lower()
            return "gpu" if any(w in described for w in ("gpu", "cuda", "nvidia")) else "cpu"
    return None


def _device(row: dict, context: dict, file_device: str | None) -> str | None:
    for text in (_first(row, "device", False), context.get("device")):
        text = str(text or "").lower()
        if "cuda" in text or "gpu" in text:
            return "gpu"
        if "cpu" in text:
            return "cpu"
    return file_device


def _budget_key(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and value > 1:
        value = int(value)  # r = 16.0 and r = 16 are the same setting
    return f"{value:g}" if isinstance(value, float) else str(value).strip()


_RECIPES: dict[Path, tuple[str, Any, str | None]] = {}


def _recipe_setting(recipe: str, root: Path) -> tuple[str, Any, str | None]:
    """(token pass type, its budget, model) of a committed recipe; (file stem, None, None) when unreadable."""
    path = (root / recipe).resolve()
    if path not in _RECIPES:
        try:
            from tokcomp.evaluation.sweep import token_pass_index
            from tokcomp.recipe import load_recipe

            loaded = load_recipe(path)
            spec = loaded.passes[token_pass_index(loaded)]
            budget = getattr(spec.config, "target_flops", None)
            budget = budget if budget is not None else getattr(spec.config, "r", None)
            _RECIPES[path] = (spec.type, budget, loaded.model.source)
        except Exception:  # a missing or foreign recipe still gets a row, named by its file
            _RECIPES[path] = (Path(recipe).stem, None, None)
    return _RECIPES[path]


def _identity(row: dict, context: dict, root: Path) -> tuple[str, str, Any]:
    """(model, reducer as shown, budget): a row name beats the pass type, so variants of one pass stay apart."""
    model = _first(row, "model", False) or context.get("model")
    reducer, budget = _first(row, "reducer", False), _first(row, "budget", False)
    budget = budget if budget is not None else context.get("budget")
    if budget is None and isinstance(row.get("keep"), (int, float)):
        budget = f"keep {row['keep']:g}"  # decoder passes: a kept share of the prompt, not a FLOPs target
    recipe = row.get("recipe") or context.get("recipe")
    if reducer is None and isinstance(recipe, str):
        reducer, from_recipe, recipe_model = _recipe_setting(recipe, root)
        budget = budget if budget is not None else from_recipe
        model = model or recipe_model
    return str(model or ""), str(context.get("name") or reducer), budget


def _speed_key(device: str | None, runtime: Any) -> str:
    device_part = device or "unknown"
    return f"speedup:{device_part}" + ("" if runtime in EAGER else f":{runtime}")


def _file_rows(name: str, data: Any, root: Path) -> list[dict]:
    """Normalised rows of one file, with speed-ups derived from throughput / latency against its baseline rows."""
    file_device, parsed = _file_device(data, name), []
    scope = data.get("scope") if isinstance(data, dict) else None
    for row, context in _rows(data, {}):
        model, reducer, budget = _identity(row, context, root)
        if scope:
            budget = f"{_budget_key(budget)} ({scope})" if budget is not None else f"({scope})"
        runtime = _first(row, "runtime", False) or context.get("runtime")
        numbers = {n: _first(row, n, True) for n in NUMBERS}
        ratio, cut = numbers.pop("flops_ratio"), numbers.pop("flops_cut")
        if ratio is None and cut is not None:
            ratio = 1 - cut
        parsed.append(
            {
                "model": model,
                "reducer": reducer,
                "budget": _budget_key(budget),
                "missed": row.get("matched") is False,
                "speed_key": _speed_key(_device(row, context, file_device), runtime),
                "group": json.dumps({k: v for k, v in context.items() if k not in ("model", "name")}, sort_keys=True),
                **numbers,
                "flops_ratio": 1 / ratio if ratio and ratio > 1 else ratio,
            }
        )
    baselines = {(r["model"], r["speed_key"], r["group"]): r for r in parsed if r["reducer"].lower() in BASELINES}
    for row in parsed:
        base = baselines.get((row["model"], row["speed_key"], row["group"]))
        if row["speedup"] is None and base and row["throughput"] and base["throughput"]:
            row["speedup"] = row["throughput"] / base["throughput"]
        if row["speedup"] is None and base and row["latency_ms"] and base["latency_ms"]:
            row["speedup"] = base["latency_ms"] / row["latency_ms"]
    return [r for r in parsed if r["reducer"].lower() not in BASELINES]


@dataclass
class Entry:
    model: str
    reducer: str
    budget: str
    values: dict[str, float] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    missed: bool = False  # the reducer could not meet this budget

    def merge(self, values: dict[str, float], source: str, missed: bool) -> None:
        for key, value in values.items():
            self.values.setdefault(key, value)  # the first file (in name order) wins a conflict
        if source not in self.sources:
            self.sources.append(source)
        self.missed = self.missed or missed


@dataclass
class Results:
    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> where it was measured
    without_rows: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _described(data: Any) -> dict[str, Any]:
    """Where a file was measured: its top-level context scalars and those of a machine/hardware object."""
    if not isinstance(data, dict):
        return {}
    found = _scalars(data, ("device", "runtime", "batch_size", "batch", "threads", "dtype"))
    for key in MACHINE_KEYS:
        if isinstance(data.get(key), dict):
            found.update({k: v for k, v in _scalars(data[key], list(data[key])).items() if k != "platform"})
    return found


def read_results(folder: Path, root: Path = ROOT) -> Results:
    results = Results()
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            results.warnings.append(f"skipped {path.name}: not valid JSON ({exc})")
            continue
        rows = _file_rows(path.name, data, root)
        results.files[path.name] = _described(data)
        if not rows:
            results.without_rows.append(path.name)
        for row in rows:
            key = (row["model"], row["reducer"], row["budget"])
            values = {m: row[m] for m in METRICS if row.get(m) is not None}
            if row["speedup"] is not None:
                values[row["speed_key"]] = row["speedup"]
            results.entries.setdefault(key, Entry(*key)).merge(values, path.name, row["missed"])
    return results


# ------------------------------------------------------------------ writing

COLUMNS = [  # (header, key, format)
    ("Model", "model", None),
    ("Reducer", "reducer", None),
    ("Budget", "budget", None),
    ("GMACs", "gmacs", "{:.3f}"),
    ("FLOPs", "flops_ratio", "ratio"),
    ("Output cosine", "cosine", "{:.4f}"),
    ("Top-1 agreement", "agreement", "pct"),
    ("Top-1 accuracy", "accuracy", "pct"),
    ("Needles found", "needles", "pct"),
    ("Cosine vs ToMe, paired (95% CI)", "paired_difference", "paired"),
]


def _speed_columns(entries: list[Entry]) -> list[tuple[str, str, str]]:
    """One column per (device, runtime) measured: CPU first, then GPU, eager before other runtimes."""
    keys = {k for e in entries for k in e.values if k.startswith("speedup:")}
    columns = []
    for key in sorted(keys, key=lambda k: (k.split(":")[1] != "cpu", k)):
        _, device, *runtime = key.split(":")
        header = "Speed-up" if device == "unknown" else f"{device.upper()} speed-up"
        columns.append((header + (f" ({runtime[0]})" if runtime else ""), key, "{:.2f}x"))
    return columns


def _cell(entry: Entry, key: str, style: str | None) -> str:
    if style is None:
        text = getattr(entry, key) or "-"
        return f"{text} (not met)" if key == "budget" and entry.missed else text
    value = entry.values.get(key)
    if value is None:
        return "-"
    if style == "pct":
        return f"{100 * value:.1f}%"
    if style == "ratio":
        return f"{100 * (value - 1):+.1f}%"
    if style == "paired":
        low, high = entry.values.get("paired_low"), entry.values.get("paired_high")
        if low is None or high is None:
            return f"{value:+.4f}"
        word = "tie" if low <= 0 <= high else ("better" if low > 0 else "worse")
        return f"{value:+.4f} [{low:+.4f}, {high:+.4f}] {word}"
    return style.format(value)


def _sort_key(entry: Entry) -> tuple:
    return (entry.model, entry.budget, -entry.values.get("cosine", 0.0), entry.reducer)


def table(results: Results) -> str:
    entries = sorted(results.entries.values(), key=_sort_key)
    columns = [*COLUMNS, *_speed_columns(entries)]
    used = [c for c in columns if any(_cell(e, c[1], c[2]) != "-" for e in entries)]  # drop empty columns
    lines = ["| " + " | ".join(c[0] for c in used) + " | Source |", "|" + "---|" * (len(used) + 1)]
    for entry in entries:
        cells = [_cell(entry, key, style) for _, key, style in used]
        sources = ", ".join(f"`{s}`" for s in entry.sources)
        lines.append("| " + " | ".join([*cells, sources]) + " |")
    return "\n".join(lines)


def _merge_map_block(root: Path) -> str:
    if not (root / MERGE_MAP).is_file():
        return ""
    caption = "Merge map drawn by `tokcomp report`: each outlined region is the set of patches one final token covers."
    facts_file = root / MERGE_MAP_FACTS
    if facts_file.is_file():
        facts = json.loads(facts_file.read_text())
        caption = (
            f"What `{facts['recipe']}` merges in {facts['model']} ({100 * (facts['flops_ratio'] - 1):+.0f}% FLOPs): "
            f"{facts['final_tokens']} tokens leave the last block out of {facts['input_tokens']}; each outlined "
            f"region is the set of patches one final token covers (left: input, right: merge map). "
            "`tokcomp report CHECKPOINT` draws these for any vision checkpoint."
        )
    return f"![merge map]({MERGE_MAP.as_posix()})\n\n*{caption}*\n"


def section(results: Results, root: Path, results_dir: Path) -> str:
    rel = os.path.relpath(results_dir, root)
    parts = [f"<!-- generated by benchmarks/readme_table.py from {rel}/*.json: edit those, then re-run it -->", ""]
    if results.entries:
        parts += [
            "Fidelity is measured against the uncompressed model on the same inputs (cosine of pooled outputs; "
            "top-1 agreement for classifiers); FLOPs are multiply-accumulates at the reference input (DiffRate's "
            "convention), relative to the original; speed-ups are measured throughput against the original.",
            "",
            table(results),
            "",
        ]
    else:
        parts += [f"No benchmark results are committed yet (`{rel}/*.json`).", ""]
    machines: dict[str, list[str]] = {}  # one description, the files measured there
    for name, described in results.files.items():
        if described:
            machines.setdefault(", ".join(f"{k} {v}" for k, v in described.items()), []).append(f"`{name}`")
    if machines:
        parts += ["Measured on: " + "; ".join(f"{', '.join(n)}: {d}" for d, n in machines.items()) + ".", ""]
    if results.without_rows:
        parts += ["Other results: " + ", ".join(f"[`{n}`]({rel}/{n})" for n in results.without_rows) + ".", ""]
    if block := _merge_map_block(root):
        parts.append(block)
    return "\n".join(parts).rstrip() + "\n"


def replace_section(readme: str, body: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"README.md needs exactly one {START} followed by one {END}; add them where the table goes")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{body}{END}{tail}"


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ------------------------------------------------------------------ the picture


def draw_merge_map(root: Path, images: int = 4) -> None:
    """Compile recipes/quickstart.yaml (zoo:dinov2-small) and draw its merge maps with the report code."""
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe, recipe_from_dict
    from tokcomp.visual import build_page
    from tokcomp.visual.merge_map import png_bytes, side_by_side

    recipe = load_recipe(root / "recipes/quickstart.yaml")
    document = recipe.document.model_dump(mode="json")
    document["evaluation"].update({"samples": 2, "random_baseline": False})  # the picture needs the passes only
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = compile_recipe(recipe_from_dict(document), Path(tmp) / "quickstart")
        page = build_page(checkpoint, images=images, data="zoo:imagenet")
        report = json.loads((checkpoint / "report.json").read_text())
    (root / MERGE_MAP.parent).mkdir(parents=True, exist_ok=True)
    write_atomic(root / MERGE_MAP, png_bytes(side_by_side(page.merge_maps, columns=2, scale=1)))
    facts = {
        "recipe": "recipes/quickstart.yaml",
        "model": recipe.model.source,
        "images": [m.name for m in page.merge_maps],
        "regions": [m.regions for m in page.merge_maps],
        "input_tokens": report["tokens_per_layer"]["input"],
        "final_tokens": report["tokens_per_layer"]["compressed"][-1],
        "flops_ratio": report["flops"]["ratio"],
    }
    write_atomic(root / MERGE_MAP_FACTS, (json.dumps(facts, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--results", type=Path, help="results folder (default ROOT/benchmarks/results)")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date; write nothing")
    parser.add_argument(
        "--merge-map", action="store_true", help="redraw the merge-map picture (compiles the quickstart)"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    results_dir = (args.results or root / "benchmarks/results").resolve()
    if args.merge_map and not args.check:
        draw_merge_map(root)
    results = read_results(results_dir, root)
    for warning in results.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    readme = root / "README.md"
    old = readme.read_text()
    new = replace_section(old, section(results, root, results_dir))
    if args.check:
        if new != old:
            print("README.md results are out of date: run python benchmarks/readme_table.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        write_atomic(readme, new.encode())
    print(f"README.md results: {len(results.entries)} rows from {len(results.files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
