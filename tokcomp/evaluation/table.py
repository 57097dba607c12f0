"""The rows a person reads from an eval result, shared by the terminal table and the HTML report."""

from __future__ import annotations

from typing import Any

HEADERS = ("metric", "original", "compressed")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def title(result: dict[str, Any]) -> str:
    return f"{result['model']} on {result['samples']} samples of {result['data']}"


def metric_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, original, compressed) for every score the result holds; the original's fidelity is 1 by definition."""
    rows = []
    if accuracy := result.get("accuracy"):
        original, compressed = accuracy.get("original") or {}, accuracy["compressed"]
        rows.append(("top-1 accuracy", _pct(original.get("top1")), _pct(compressed["top1"])))
        if "top5" in compressed:
            rows.append(("top-5 accuracy", _pct(original.get("top5")), _pct(compressed["top5"])))
    if result.get("task") == "speech-recognition":  # tokcomp/evaluation/speech_eval.py
        rows += _speech_rows(result)
    if fidelity := result.get("fidelity"):
        rows.append(("output cosine (mean)", "1", _num(fidelity["cosine_mean"])))
        rows.append(("output cosine (worst sample)", "1", _num(fidelity["cosine_min"])))
        if "top1_agreement" in fidelity:
            rows.append(("top-1 agreement with original", "100%", _pct(fidelity["top1_agreement"])))
            rows.append(("KL(original || compressed)", "0", _num(fidelity["kl_mean"], 5)))
    return rows


def _speech_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name, group in [*result["languages"].items(), ("all", result["overall"])]:
        original, compressed = group.get("original_vs_reference") or {}, group.get("compressed_vs_reference") or {}
        rows.append((f"WER vs reference ({name})", _pct(original.get("wer")), _pct(compressed.get("wer"))))
        rows.append((f"CER vs reference ({name})", _pct(original.get("cer")), _pct(compressed.get("cer"))))
        if changed := group.get("compressed_vs_original"):
            rows.append((f"WER vs the original's transcripts ({name})", "0.00%", _pct(changed["wer"])))
    encoder = result["encoder"]["per_window"]
    rows.append(("encoder GMACs per 30 s window", _num(encoder["original"], 3), _num(encoder["compressed"], 3)))
    return rows


def caption(result: dict[str, Any]) -> str | None:
    accuracy = result.get("accuracy")
    return f"labels: {accuracy['labels']}" if accuracy else None
