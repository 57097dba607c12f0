"""Score a compressed model against its original on a data set: fidelity on any data,
top-1 / top-5 accuracy when the model has a classifier and the data has labels."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tokcomp.analysis.fidelity import model_outputs
from tokcomp.data import Sample, load_samples, make_batches
from tokcomp.data.sources import default_data
from tokcomp.evaluation.labels import Targets, classifier_targets
from tokcomp.evaluation.metrics import AccuracyMeter, FidelityMeter, flag_low_fidelity
from tokcomp.evaluation.models import open_models
from tokcomp.progress import progress_bar, step

RESULT_KIND = "tokcomp-eval"


@dataclass
class EvalSet:
    """Samples plus everything needed to batch them the way the model expects."""

    data: str
    samples: list[Sample]
    targets: Targets
    processor: Any
    modality: str
    batch_size: int
    sequence_length: int | None = None

    @property
    def num_batches(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def batches(self) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """(model inputs, class index per sample) one batch at a time; nothing is kept in memory."""
        inputs = make_batches(self.samples, self.processor, self.modality, self.batch_size, self.sequence_length)
        for index, batch in enumerate(inputs):
            start = index * self.batch_size
            yield batch, torch.tensor(self.targets.values[start : start + self.batch_size])


def load_eval_set(
    data: str | None,
    modality: str,
    processor,
    id2label: dict | None,
    samples: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    sequence_length: int | None = None,
) -> EvalSet:
    data = data or default_data(modality)
    chosen = load_samples(data, modality, samples, seed)
    targets = classifier_targets(chosen, data, id2label)
    return EvalSet(data, chosen, targets, processor, modality, batch_size, sequence_length)


class Reference:
    """The original model's outputs; `remember=True` keeps them so a sweep runs the original once."""

    def __init__(self, model: nn.Module, pooling: str, remember: bool = False):
        self.model, self.pooling, self.remember = model, pooling, remember
        self._seen: dict[int, dict[str, Tensor]] = {}

    def outputs(self, index: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if index in self._seen:
            return self._seen[index]
        out = model_outputs(self.model, batch, self.pooling)
        if self.remember:
            self._seen[index] = out
        return out


def score(
    compressed: nn.Module, eval_set: EvalSet, pooling: str, reference: Reference | None, label: str = "evaluating"
) -> dict[str, Any]:
    """{"fidelity": ... or None, "accuracy": ... or None, "notes": [why something is missing]}."""
    fidelity, acc_original, acc_compressed = FidelityMeter(), AccuracyMeter(), AccuracyMeter()
    has_logits = False
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=eval_set.num_batches, status="")
        for index, (batch, labels) in enumerate(eval_set.batches()):
            out = model_outputs(compressed, batch, pooling)
            has_logits = "logits" in out
            if has_logits:
                acc_compressed.update(out["logits"], labels)
            if reference is not None:
                ref = reference.outputs(index, batch)
                fidelity.update(ref, out)
                if "logits" in ref:
                    acc_original.update(ref["logits"], labels)
            cosine = fidelity.running_cosine()
            bar.update(task, advance=1, status="" if cosine is None else f"cosine {cosine:.4f}")
    notes = [] if reference is not None else ["fidelity skipped: no original model to compare with"]
    accuracy, why_not = _accuracy(eval_set.targets, has_logits, acc_original, acc_compressed, reference)
    if why_not:
        notes.append(f"accuracy skipped: {why_not}")
    return {"fidelity": fidelity.result(), "accuracy": accuracy, "notes": notes}


def _accuracy(
    targets: Targets, has_logits: bool, original: AccuracyMeter, compressed: AccuracyMeter, reference
) -> tuple[dict | None, str | None]:
    if not targets.labeled:
        return None, "the data has no labels"
    if not has_logits:
        return None, "the model has no classifier head (no logits)"
    if compressed.out_of_range:
        return None, (
            f"{compressed.out_of_range} labels are outside the classifier's {compressed.classes} classes "
            "(the data's classes are not this model's)"
        )
    result = {"labels": targets.how, "compressed": compressed.result()}
    if reference is not None:
        result["original"] = original.result()
    return result, None


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    samples: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    fidelity: bool = True,
) -> dict[str, Any]:
    """Everything `tokcomp eval` writes: the checkpoint scored against its original on `data`."""
    started = time.perf_counter()
    with step(f"loading {path}"):
        models = open_models(path, with_original=fidelity)
    state = models.state
    config = getattr(models.compressed, "config", None)
    with step(f"reading {data or default_data(state.input.modality)}"):
        eval_set = load_eval_set(
            data,
            state.input.modality,
            models.processor,
            getattr(config, "id2label", None),
            samples,
            batch_size,
            seed,
            state.input.sequence_length,
        )
    reference = Reference(models.original, state.base.pooling) if models.original is not None else None
    with step(f"scoring {len(eval_set.samples)} samples of {eval_set.data}"):
        scores = score(models.compressed, eval_set, state.base.pooling, reference)
    if scores["fidelity"]:
        scores["fidelity"] = flag_low_fidelity(scores["fidelity"], _thresholds(Path(path)))
    return {
        "kind": RESULT_KIND,
        "checkpoint": str(Path(path).resolve()),
        "model": state.base.source,
        "passes": [p.name for p in state.passes],
        "data": eval_set.data,
        "samples": len(eval_set.samples),
        "seed": seed,
        "pooling": state.base.pooling,
        **scores,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _thresholds(path: Path) -> dict[str, float | None]:
    """The fidelity thresholds the checkpoint was compiled with (its report.json), else the defaults."""
    from tokcomp.fileio import read_json
    from tokcomp.recipe import FidelityThresholds

    report = read_json(path / "report.json") if (path / "report.json").is_file() else {}
    recorded = (report.get("fidelity") or {}).get("warn_below")
    return recorded or FidelityThresholds().model_dump()
