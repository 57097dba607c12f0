"""README.md of a checkpoint folder, in the Hugging Face model-card convention.

A YAML header (base model, library, tags, pipeline tag) and what a person opening the
folder needs: what was compressed and how, the measured numbers (FLOPs, params, tokens,
fidelity, speed when benchmarked, exports), how to load it in each tool, and its limits.
Written from tokcomp.json and report.json alone, so `tokcomp export` and `tokcomp bench`
can write it again with their results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tokcomp.fileio import read_json

CARD_FILE = "README.md"
_PIPELINE_TAGS = {"image": "image-feature-extraction", "text": "feature-extraction", "audio": "automatic-speech-recognition"}
_GENERATIVE_TAGS = {"ForCausalLM": "text-generation", "ForConditionalGeneration": "automatic-speech-recognition"}


def write_card(folder: Path) -> None:
    """(Re)write README.md in a checkpoint folder from its tokcomp.json, report.json and bench.json."""
    from tokcomp.fileio import atomic_write_text

    atomic_write_text(folder / CARD_FILE, render_card(folder))


def render_card(folder: Path) -> str:
    state = read_json(folder / "tokcomp.json")
    report = read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
    bench = read_json(folder / "bench.json") if (folder / "bench.json").is_file() else None
    sentence_transformers = (folder / "modules.json").is_file()
    token_passes = [p for p in state["passes"] if "tokens_per_layer" in p["metadata"]]
    sections = [
        _header(state, sentence_transformers, token_passes),
        _title(state),
        _what(state, report),
        _numbers(report, bench, state.get("exports", [])),
        _loading(state, sentence_transformers, token_passes),
        _limits(state, report, token_passes),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(state: dict[str, Any], sentence_transformers: bool, token_passes: list[dict[str, Any]]) -> str:
    base = state["base"]
    modality = state["input"]["modality"]
    tags = ["tokcomp", *(p["name"] for p in state["passes"])]
    if token_passes:
        tags.append("token-reduction")
    if sentence_transformers:
        tags += ["sentence-transformers", "sentence-similarity"]
    header: dict[str, Any] = {}
    if base.get("hub_id"):
        header["base_model"] = base["hub_id"]
    header["library_name"] = "sentence-transformers" if sentence_transformers else base["library"]
    generative = next((tag for suffix, tag in _GENERATIVE_TAGS.items() if base["class_name"].endswith(suffix)), None)
    header["pipeline_tag"] = "sentence-similarity" if sentence_transformers else generative or _PIPELINE_TAGS[modality]
    header["tags"] = list(dict.fromkeys(tags))
    return "---\n" + yaml.safe_dump(header, sort_keys=False).strip() + "\n---"


def _title(state: dict[str, Any]) -> str:
    names = ", ".join(p["name"] for p in state["passes"])
    return f"# {state['base']['source']}, compressed with tokcomp ({names})"


def _what(state: dict[str, Any], report: dict[str, Any]) -> str:
    lines = ["## What was done", ""]
    for record in state["passes"]:
        settings = ", ".join(f"{k}: {v}" for k, v in record["config"].items() if v not in (None, [], {}))
        lines.append(f"- **{record['name']}** (pass version {record['version']}){': ' + settings if settings else ''}")
    tokens = report.get("tokens_per_layer")
    if tokens:
        lines += [
            "",
            f"Tokens after each layer at the reference input ({tokens['input']} tokens): "
            f"{', '.join(map(str, tokens['compressed']))}. Budgets are rates of each input's own tokens: "
            "other lengths and resolutions, and every sample of a padded batch, are reduced in the same "
            "proportion of their real tokens.",
        ]
    return "\n".join(lines)


def _numbers(report: dict[str, Any], bench: dict[str, Any] | None, exports: list[dict[str, Any]]) -> str:
    rows = []
    flops = report.get("flops")
    if flops:
        cut = 1 - flops["ratio"]
        rows.append(f"| FLOPs (GMACs) | {flops['original']:.3f} | {flops['compressed']:.3f} ({cut:.1%} fewer) |")
    params = report.get("params")
    if params:
        rows.append(f"| parameters | {params['original']:,} | {params['compressed']:,} |")
    lines = ["## Measured", ""]
    if rows:
        lines += ["| | original | compressed |", "|---|---|---|", *rows, ""]
    lines.append(_fidelity_line(report.get("fidelity")))
    for name in reporting_passes(report):  # passes that report checks of their own (vocab_trim)
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in report[name].items() if _is_scalar(v)))
    if bench:
        from tokcomp.export.bench import speedup_text

        for row in bench.get("results", []):
            lines.append(
                f"- speed-up ({row['runtime']}, batch {row['batch_size']}, `tokcomp bench`): {speedup_text(row)}"
                + (f", load average {row['load_1min']:.2f}" if row.get("load_1min") is not None else "")
            )
    for entry in exports:
        check = entry.get("validation", {})
        status = "validated" if check.get("passed", True) else "FAILED validation"
        lines.append(f"- export `{entry['file']}` ({entry['format']}): {status}")
    return "\n".join(lines)


def _fidelity_line(fidelity: dict[str, Any] | None) -> str:
    if not fidelity:
        return "- fidelity: not measured (compiled without evaluation); run `tokcomp eval` on this folder"
    if "cosine_mean" not in fidelity:  # speech: scored on transcripts
        from tokcomp.evaluation.metrics import transcript_fidelity_text

        text = f"- fidelity on {fidelity['samples']} clips of {fidelity['data']}: {transcript_fidelity_text(fidelity)}"
        return text + _below_threshold(fidelity)
    text = (
        f"- fidelity on {fidelity['samples']} samples of {fidelity['data']}: {fidelity['pooling']}-pooled cosine "
        f"to the original {fidelity['cosine_mean']:.4f} (min {fidelity['cosine_min']:.4f})"
    )
    if "top1_agreement" in fidelity:
        text += f", top-1 agreement {fidelity['top1_agreement']:.4f}"
    baseline = fidelity.get("random_drop_baseline")
    if baseline:
        text += f"; random token drop at the same counts: {baseline['cosine_mean']:.4f}"
    return text + _below_threshold(fidelity)


def _below_threshold(fidelity: dict[str, Any]) -> str:
    below = fidelity.get("below_threshold")
    if not below:
        return ""
    return f"\n- **warning: below the fidelity threshold** ({', '.join(f'{k} {v:.4f}' for k, v in below.items())})"


def _loading(state: dict[str, Any], sentence_transformers: bool, token_passes: list[dict[str, Any]]) -> str:
    lines = [
        "## How to load",
        "",
        "tokcomp must be installed (`pip install tokcomp`):",
        "",
        "```python",
        "import tokcomp",
        'model = tokcomp.load("path/to/this/folder")',
        "```",
    ]
    if sentence_transformers:
        trust = ", trust_remote_code=True" if token_passes else ""
        lines += [
            "",
            "sentence-transformers (mean pooling counts each merged token as the input tokens it stands for):",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("path/to/this/folder"{trust})',
            "```",
        ]
    if token_passes and state["base"]["library"] == "transformers":
        lines += [
            "",
            "transformers: `AutoModel.from_pretrained(folder, trust_remote_code=True)` returns the compressed "
            "model (the folder's `tokcomp_auto.py` only imports the installed tokcomp); in a process that has "
            "imported `tokcomp.integrations.hf_auto` (`tokcomp.load` does) the flag is not needed. Without either, transformers refuses the folder rather than loading the "
            "uncompressed model.",
        ]
    if state["input"]["modality"] == "text" and token_passes:
        lines += [
            "",
            "ONNX Runtime: `tokcomp export FOLDER --format onnx`, then "
            "`tokcomp.runtime.OnnxSentenceEncoder(FOLDER).encode(texts)` (any length, dynamic padding).",
        ]
    return "\n".join(lines)


def _limits(state: dict[str, Any], report: dict[str, Any], token_passes: list[dict[str, Any]]) -> str:
    lines = ["## Limits", ""]
    if token_passes:
        lines.append(
            "- Token reduction changes the output: the model returns fewer tokens than it was given, each "
            "standing for several input tokens. Per-token outputs (token classification, span extraction) do "
            "not map one to one onto the input; pool with the token sizes."
        )
        lines.append(
            "- Fidelity above is measured on the samples named, not on your task: check it on your own data "
            "with `tokcomp eval`."
        )
    if not report.get("fidelity") and token_passes:
        lines.append("- No fidelity was measured at compile time.")
    lines.append(f"- Written by tokcomp {state.get('tokcomp_version', '?')}; reloading needs tokcomp installed.")
    return "\n".join(lines)


def reporting_passes(report: dict[str, Any]) -> list[str]:
    """Names of the passes whose own report (a dict under their name) report.json carries."""
    return [name for name in report.get("passes", []) if isinstance(report.get(name), dict)]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool)
