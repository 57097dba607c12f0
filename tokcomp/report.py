"""report.json: FLOPs (GMACs), params, tokens after every layer, fidelity to the original."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from tokcomp.analysis.baselines import random_drop_like
from tokcomp.analysis.fidelity import compare_models
from tokcomp.analysis.flops import gmacs, model_macs, per_layer_macs
from tokcomp.data import load_samples, make_batches
from tokcomp.data.sources import default_data
from tokcomp.errors import UnsupportedModelError
from tokcomp.evaluation.metrics import flag_low_fidelity
from tokcomp.passes import PassRecord
from tokcomp.progress import info, progress_bar, step
from tokcomp.recipe import EvaluationSpec
from tokcomp.sources import LoadedModel
from tokcomp.surgery import find_adapter, token_blocks


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def token_record(records: list[PassRecord]) -> PassRecord | None:
    return next((r for r in reversed(records) if "tokens_per_layer" in r.metadata), None)


def build_report(
    original: nn.Module, loaded: LoadedModel, records: list[PassRecord], evaluation: EvaluationSpec | None, seed: int
) -> dict[str, Any]:
    """report.json; `evaluation` None (evaluation: false, --no-eval) leaves fidelity unmeasured (null)."""
    report: dict[str, Any] = {
        "source": loaded.source,
        "input": {k: v for k, v in vars(loaded.input_spec).items() if v is not None},
        "passes": [r.name for r in records],
        "params": {"original": count_params(original), "compressed": count_params(loaded.model)},
    }
    token_pass = token_record(records)
    report.update(_flops_and_tokens(original, loaded, token_pass))
    # Token fidelity only means something after token reduction; other passes report their own checks.
    measure = token_pass is not None and evaluation is not None
    if measure and loaded.input_spec.modality == "audio":
        report["fidelity"] = _speech_fidelity(original, loaded, evaluation, seed)
    else:
        report["fidelity"] = _fidelity(original, loaded, token_pass, evaluation, seed) if measure else None
    for record in records:
        if "report" in record.metadata:
            report[record.name] = record.metadata["report"]
    return report


def _flops_and_tokens(original: nn.Module, loaded: LoadedModel, token_pass: PassRecord | None) -> dict[str, Any]:
    try:
        geometry = find_adapter(original).geometry(original, loaded.input_spec)
    except UnsupportedModelError:
        return {"flops": None, "tokens_per_layer": None}
    dense = [geometry.input_tokens] * geometry.num_layers
    reduced = token_pass.metadata["tokens_per_layer"] if token_pass else dense
    # the compressed count includes what its reducers' learned models cost (Reducer.overhead_macs)
    reducers = ([block.reducer for block in token_blocks(loaded.model)] or None) if token_pass else None
    before, after = gmacs(model_macs(geometry, dense)), gmacs(model_macs(geometry, reduced, reducers))
    return {
        "flops": {
            "unit": "GMACs",
            "original": round(before, 6),
            "compressed": round(after, 6),
            "ratio": after / before,
            "per_layer": {
                "original": [round(gmacs(m), 6) for m in per_layer_macs(geometry, dense)],
                "compressed": [round(gmacs(m), 6) for m in per_layer_macs(geometry, reduced, reducers)],
            },
        },
        "tokens_per_layer": {"input": geometry.input_tokens, "original": dense, "compressed": reduced},
    }


def _fidelity(
    original: nn.Module, loaded: LoadedModel, token_pass: PassRecord, evaluation: EvaluationSpec, seed: int
) -> dict[str, Any]:
    spec = loaded.input_spec
    data = evaluation.data or default_data(spec.modality)
    result: dict[str, Any] = {"data": data, "pooling": loaded.pooling}
    with step(f"measuring fidelity on {data}"):
        samples = load_samples(evaluation.data, spec.modality, evaluation.samples, seed)
        batches = list(
            make_batches(samples, loaded.processor, spec.modality, evaluation.batch_size, spec.sequence_length)
        )
        result.update(compare_models(original, loaded.model, _with_progress(batches, "fidelity"), loaded.pooling))
    if evaluation.random_baseline:
        meta = token_pass.metadata
        with step(f"random-drop baseline on {len(samples)} samples"):
            baseline = random_drop_like(original, meta["input_tokens"], meta["tokens_per_layer"], seed)
            result["random_drop_baseline"] = compare_models(
                original, baseline, _with_progress(batches, "random-drop baseline"), loaded.pooling
            )
    return flag_low_fidelity(result, evaluation.warn_below.model_dump())


def _speech_fidelity(original: nn.Module, loaded: LoadedModel, evaluation: EvaluationSpec, seed: int):
    """Speech: KL and top-1 agreement with the original on its teacher-forced transcripts of evaluation clips
    (calibrate/speech.py), never calibration clips; None, said once, when the model has no processor."""
    from tokcomp.calibrate.speech import TranscriptFidelity, speech_clips_for

    if loaded.processor is None or not hasattr(loaded.processor, "feature_extractor"):
        info("fidelity: not measured at compile time: the speech model has no processor (feature extractor)")
        return None
    from tokcomp.errors import ZooError

    try:
        with step("reading speech evaluation clips"):
            data, clips = speech_clips_for(original, evaluation.data, evaluation.samples, seed, split="evaluation")
    except ZooError as error:  # the default clips come from Debian packages; a user's own data must load
        if evaluation.data is not None:
            raise
        info(f"fidelity: not measured at compile time: the zoo's speech clips are unavailable ({error}); "
             "set evaluation.data to your own clips")  # fmt: skip
        return None
    if not clips:
        info("fidelity: not measured at compile time: no zoo evaluation clip is in this model's languages")
        return None
    with step(f"measuring fidelity on {len(clips)} clips of {data} (teacher-forced transcripts)"):
        scores = TranscriptFidelity(original, loaded.processor, clips).per_clip(loaded.model)
    result = {
        "data": data,
        "samples": len(clips),
        "measure": "the original's greedy transcripts teacher-forced through both models",
        "kl_mean": sum(s["kl"] for s in scores) / len(scores),
        "top1_agreement": sum(s["top1_agreement"] for s in scores) / len(scores),
        "top1_agreement_min": min(s["top1_agreement"] for s in scores),
    }
    return flag_low_fidelity(result, evaluation.warn_below.model_dump())


def _with_progress(batches: list, label: str) -> Iterator:
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=len(batches), status="")
        for batch in batches:
            yield batch
            bar.advance(task)


