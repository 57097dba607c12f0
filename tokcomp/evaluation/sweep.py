"""`tokcomp sweep`: one recipe compiled at several FLOPs budgets, scored, as a trade-off curve.

Each budget is the recipe with its token pass's `target_flops` replaced (through the
recipe schema, so every budget is validated like a hand-written recipe). Fidelity
comes from each compile's own report.json (same data, same seed); accuracy, when the
model has a classifier and the evaluation data has labels, is scored here against the
original, which runs once for the whole sweep.

    OUT/sweep.csv            one row per budget plus the original
    OUT/sweep.json           the same rows with the sweep's settings
    OUT/sweep.png            fidelity (and accuracy) against GMACs
    OUT/checkpoints/<slug>/  the compiled checkpoint of every budget
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokcomp.analysis.flops import resolve_flops_target
from tokcomp.errors import TokcompError
from tokcomp.fileio import atomic_directory, check_output_folder, read_json, write_json
from tokcomp.progress import info
from tokcomp.recipe import EvaluationSpec, Recipe, recipe_from_dict

RESULT_KIND = "tokcomp-sweep"
SWEEP_FILE = "sweep.json"  # also what marks a folder as a sweep's, which --force may replace
BUDGET_KEY = "target_flops"
CSV_COLUMNS = (
    "budget",
    "reducer",
    "gmacs",
    "flops_ratio",
    "final_tokens",
    "cosine_mean",
    "cosine_min",
    "top1_agreement",
    "kl_mean",
    "random_drop_cosine_mean",
    "top1_accuracy",
    "top5_accuracy",
    "checkpoint",
)
BUDGET_HINT = 'budgets are fractions of the original FLOPs (0.8), cuts ("-30%") or GMACs ("2.9G"), comma-separated'


def parse_budgets(text: str) -> list[float | str]:
    """ "0.9, 0.7, -50%" -> [0.9, 0.7, "-50%"], each checked the way the pass will read it."""
    budgets: list[float | str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            budget: float | str = float(item)
        except ValueError:
            budget = item
        resolve_flops_target(budget, 10**9)  # raises a TokcompError naming the bad budget
        if budget in budgets:
            raise TokcompError(f"budget {item} is given twice", hint=BUDGET_HINT)
        budgets.append(budget)
    if not budgets:
        raise TokcompError(f"no budgets in {text!r}", hint=BUDGET_HINT)
    return budgets


def token_pass_index(recipe: Recipe) -> int:
    """The one pass whose config takes a FLOPs budget."""
    found = [i for i, spec in enumerate(recipe.passes) if BUDGET_KEY in type(spec.config).model_fields]
    names = ", ".join(spec.type for spec in recipe.passes)
    if not found:
        raise TokcompError(
            f"no pass in this recipe takes a FLOPs budget ({BUDGET_KEY}); its passes: {names}",
            hint="sweep a recipe with a token-reduction pass such as tome",
        )
    if len(found) > 1:
        raise TokcompError(f"several passes take a FLOPs budget ({names})", hint="sweep a recipe with one token pass")
    return found[0]


def recipe_at_budget(recipe: Recipe, index: int, budget: float | str, evaluation: dict[str, Any]) -> Recipe:
    """The recipe with pass `index` set to `budget` (its `r` removed) and evaluation settings overridden."""
    document = recipe.document.model_dump(mode="json")
    step = {key: value for key, value in document["passes"][index].items() if key != "r"}
    document["passes"][index] = {**step, BUDGET_KEY: budget}
    document["evaluation"].update(evaluation)
    return recipe_from_dict(document)


def slug(budget: float | str) -> str:
    return "flops-" + str(budget).replace("-", "minus").replace("%", "pct").replace(" ", "")


class AccuracyScorer:
    """Top-1 / top-5 of every budget's checkpoint on the evaluation data; the original runs once.

    Disabled (returns None) when the data has no labels or the model no classifier, found
    from one batch of the original, so a backbone sweep pays almost nothing for it.
    """

    def __init__(self, first_checkpoint: Path, evaluation: EvaluationSpec, seed: int):
        from tokcomp.checkpoint import read_state
        from tokcomp.evaluation.models import load_processor, open_original
        from tokcomp.evaluation.runner import Reference, load_eval_set

        state = read_state(first_checkpoint)
        original = open_original(first_checkpoint, state)
        self.pooling = state.base.pooling
        self.eval_set = load_eval_set(
            evaluation.data,
            state.input.modality,
            load_processor(first_checkpoint, state.input.modality),
            getattr(getattr(original, "config", None), "id2label", None),
            evaluation.samples,
            evaluation.batch_size,
            seed,
            state.input.sequence_length,
        )
        self.reference = Reference(original, self.pooling, remember=True)
        self.enabled = self.eval_set.targets.labeled > 0 and self._has_classifier()
        self.original: dict | None = None

    def _has_classifier(self) -> bool:
        batch, _ = next(self.eval_set.batches())
        return "logits" in self.reference.outputs(0, batch)

    def score(self, checkpoint: Path, label: str) -> dict | None:
        if not self.enabled:
            return None
        from tokcomp.checkpoint import open_checkpoint
        from tokcomp.evaluation.runner import score

        model = open_checkpoint(checkpoint).model
        accuracy = score(model, self.eval_set, self.pooling, self.reference, label)["accuracy"]
        if accuracy is None:  # labels outside the classifier's classes: nothing to plot
            self.enabled = False
            return None
        self.original = accuracy["original"]
        return accuracy["compressed"]


def budget_row(budget: float | str, reducer: str, report: dict, accuracy: dict | None, checkpoint: str) -> dict:
    fidelity = report.get("fidelity") or {}
    baseline = fidelity.get("random_drop_baseline") or {}
    return {
        "budget": budget,
        "reducer": reducer,
        "gmacs": report["flops"]["compressed"],
        "flops_ratio": report["flops"]["ratio"],
        "final_tokens": report["tokens_per_layer"]["compressed"][-1],
        "cosine_mean": fidelity.get("cosine_mean"),
        "cosine_min": fidelity.get("cosine_min"),
        "top1_agreement": fidelity.get("top1_agreement"),
        "kl_mean": fidelity.get("kl_mean"),
        "random_drop_cosine_mean": baseline.get("cosine_mean"),
        "top1_accuracy": (accuracy or {}).get("top1"),
        "top5_accuracy": (accuracy or {}).get("top5"),
        "checkpoint": checkpoint,
    }


def original_row(report: dict, accuracy: dict | None) -> dict:
    """The uncompressed model as the curve's first point; its fidelity to itself is 1 by definition."""
    has_logits = "top1_agreement" in (report.get("fidelity") or {})
    return {
        "budget": "original",
        "reducer": "none",
        "gmacs": report["flops"]["original"],
        "flops_ratio": 1.0,
        "final_tokens": report["tokens_per_layer"]["input"],
        "cosine_mean": 1.0,
        "cosine_min": 1.0,
        "top1_agreement": 1.0 if has_logits else None,
        "kl_mean": 0.0 if has_logits else None,
        "random_drop_cosine_mean": None,
        "top1_accuracy": (accuracy or {}).get("top1"),
        "top5_accuracy": (accuracy or {}).get("top5"),
        "checkpoint": "",
    }


def rows_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in CSV_COLUMNS})
    return out.getvalue()


@dataclass
class SweepSettings:
    data: str | None = None
    samples: int | None = None
    batch_size: int | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _short(source: str) -> str:
    """A local model folder by its name, anything else (zoo:, hub ids) as written."""
    return Path(source).name if Path(source).exists() else source


def run_sweep(
    recipe: Recipe,
    budgets: list[float | str],
    output: str | Path,
    settings: SweepSettings | None = None,
    force: bool = False,
) -> Path:
    """Compile and score every budget; write the CSV, JSON, plot and checkpoints into `output` atomically."""
    from tokcomp.pipeline import compile_recipe
    from tokcomp.visual import charts

    output = Path(output)
    check_output_folder(output, force=force, marker=SWEEP_FILE, inputs=recipe.local_inputs())  # before any work
    if recipe.document.evaluation is None:
        raise TokcompError("a sweep measures fidelity, but the recipe says evaluation: false", hint="remove that line")
    index = token_pass_index(recipe)
    settings = settings or SweepSettings()
    recipes = [recipe_at_budget(recipe, index, b, settings.overrides()) for b in budgets]  # all valid before any work
    reducer = recipe.passes[index].type
    rows, scorer, report = [], None, {}
    with atomic_directory(output, force=force, marker=SWEEP_FILE) as tmp:
        for number, (budget, variant) in enumerate(zip(budgets, recipes, strict=True), start=1):
            info(f"[bold]budget {budget}[/] ({number}/{len(budgets)})")
            checkpoint = compile_recipe(variant, tmp / "checkpoints" / slug(budget))
            report = read_json(checkpoint / "report.json")
            scorer = scorer or AccuracyScorer(checkpoint, variant.document.evaluation, variant.seed)
            accuracy = scorer.score(checkpoint, f"accuracy at {budget}")
            rows.append(budget_row(budget, reducer, report, accuracy, f"checkpoints/{checkpoint.name}"))
        rows.insert(0, original_row(report, scorer.original if scorer and scorer.enabled else None))
        (tmp / "sweep.csv").write_text(rows_csv(rows))
        (tmp / "sweep.png").write_bytes(charts.tradeoff_curve(rows, f"{_short(recipe.model.source)} + {reducer}"))
        evaluation = recipes[0].document.evaluation.model_dump(mode="json")
        write_json(
            tmp / SWEEP_FILE,
            {
                "kind": RESULT_KIND,
                "model": recipe.model.source,
                "reducer": reducer,
                "recipe": str(recipe.path) if recipe.path else None,
                "evaluation": evaluation,
                "seed": recipe.seed,
                "rows": rows,
            },
        )
    return output
