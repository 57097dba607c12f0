"""`tokcomp report`: one HTML page (plus its PNG figures) that shows what compression did.

Everything comes from the checkpoint folder: tokcomp.json and report.json for tokens,
FLOPs, params and fidelity; eval*.json / bench*.json beside them for measured numbers;
and, for vision models, a forward pass of the compressed model with source tracking
for the merge maps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokcomp.checkpoint import CheckpointState, read_state
from tokcomp.evaluation.metrics import low_fidelity_warning
from tokcomp.fileio import atomic_directory, check_output_folder, read_json
from tokcomp.visual import charts, html
from tokcomp.visual.merge_map import MergeMap, png_bytes, render, scale_for, side_by_side, trace_merge_maps
from tokcomp.visual.results import MAX_ROWS, ResultFile, find_results, flatten

PAGE_NAME = "report.html"
# report.json keys shown by their own sections; any other key is a pass's own report.
_KNOWN_REPORT_KEYS = {"source", "input", "passes", "params", "flops", "tokens_per_layer", "fidelity"}


@dataclass
class ReportPage:
    html: str
    pngs: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG, also inlined in the page
    merge_maps: list[MergeMap] = field(default_factory=list)


def build_page(folder: str | Path, images: int = 4, data: str | None = None, seed: int = 0) -> ReportPage:
    folder = Path(folder)
    state = read_state(folder)
    report = read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
    pngs: dict[str, bytes] = {}
    maps_section, maps = None, []
    if state.input.modality == "image":
        maps_section, maps = _merge_maps(folder, state, report, images, data, seed, pngs)
    elif state.input.modality == "audio":  # Whisper: positions merged, over the spectrogram
        from tokcomp.visual import speech_map

        maps_section = speech_map.section(folder, images, data, seed, pngs)
    sections = [
        _summary(state, report),
        _tokens(report, pngs),
        maps_section,  # right after the token counts: where the tokens went
        _compute(report, pngs),
        _fidelity(report),
        *_results(find_results(folder)),
        *_pass_reports(report),
    ]
    subtitle = f"{state.base.source} ({state.base.class_name}) · passes: {', '.join(p.name for p in state.passes)}"
    page = html.page(f"tokcomp report: {folder.resolve().name}", subtitle, [s for s in sections if s])
    return ReportPage(page, pngs, maps)


def write_report(
    folder: str | Path,
    output: str | Path | None = None,
    force: bool = False,
    images: int = 4,
    data: str | None = None,
    seed: int = 0,
) -> Path:
    """Write report.html and its PNGs into `output` (default CHECKPOINT/report) atomically; returns the page."""
    folder = Path(folder)
    output = Path(output) if output is not None else folder / "report"
    read_state(folder)  # a wrong folder fails before anything else
    check_output_folder(output, force=force, marker=PAGE_NAME)
    report = build_page(folder, images, data, seed)
    with atomic_directory(output, force=force, marker=PAGE_NAME) as tmp:
        (tmp / PAGE_NAME).write_text(report.html, encoding="utf-8")
        for name, png in report.pngs.items():
            (tmp / name).write_bytes(png)
    return output / PAGE_NAME


# ------------------------------------------------------------------ sections


def _summary(state: CheckpointState, report: dict[str, Any]) -> html.Section:
    headline = []
    if flops := report.get("flops"):
        cut = 100 * (1 - flops["ratio"])
        headline.append((f"{flops['compressed']:.3f} GMACs", f"from {flops['original']:.3f} ({cut:.1f}% fewer)"))
    if tokens := report.get("tokens_per_layer"):
        headline.append((str(tokens["compressed"][-1]), f"tokens after the last layer, from {tokens['input']}"))
    if params := report.get("params"):
        headline.append((f"{params['compressed'] / 1e6:.2f} M", f"parameters, from {params['original'] / 1e6:.2f} M"))
    if fidelity := report.get("fidelity"):
        samples = fidelity["samples"]
        if "cosine_mean" in fidelity:
            headline.append((f"{fidelity['cosine_mean']:.4f}", f"output cosine to the original ({samples} samples)"))
        else:  # speech: the original's transcripts teacher-forced through the compressed model
            headline.append((f"{fidelity['top1_agreement']:.3f}", f"top-1 agreement on the original's transcripts "
                             f"({samples} clips)"))  # fmt: skip
    size = state.input.image_size or state.input.sequence_length
    unit = "px" if state.input.modality == "image" else "tokens"
    passes = html.table(
        ("pass", "version", "config"),
        [(p.name, p.version, json.dumps(p.config, separators=(", ", ": "))) for p in state.passes],
    )
    body = html.cards(headline) + html.paragraph(f"Reference input: {state.input.modality}, {size} {unit}.") + passes
    if not report:
        body += html.note("report.json is missing: re-run `tokcomp compile` to get FLOPs, tokens and fidelity.")
    body += _low_fidelity(report.get("fidelity"))
    return html.Section("Summary", body, "summary")


def _low_fidelity(fidelity: dict[str, Any] | None) -> str:
    warning = low_fidelity_warning(fidelity)
    return html.warning(warning) if warning else ""


def _tokens(report: dict[str, Any], pngs: dict[str, bytes]) -> html.Section | None:
    tokens, flops = report.get("tokens_per_layer"), report.get("flops")
    if not tokens:
        return None
    pngs["tokens_per_layer.png"] = charts.tokens_per_layer(tokens["original"], tokens["compressed"])
    per_layer = flops["per_layer"] if flops else {"original": [], "compressed": []}
    rows, before = [], tokens["input"]
    for i, after in enumerate(tokens["compressed"]):
        gmacs = [per_layer[k][i] if i < len(per_layer[k]) else "-" for k in ("original", "compressed")]
        rows.append((i, before, after, *gmacs))
        before = after
    detail = html.table(("layer", "tokens in", "tokens out", "GMACs original", "GMACs compressed"), rows)
    body = html.img(pngs["tokens_per_layer.png"], "tokens kept after each layer") + (
        f"<details><summary>per-layer numbers</summary>{detail}</details>"
    )
    return html.Section("Tokens per layer", body, "tokens")


def _compute(report: dict[str, Any], pngs: dict[str, bytes]) -> html.Section | None:
    flops, params = report.get("flops"), report.get("params")
    if not flops and not params:
        return None
    rows = []
    if flops:
        before, after = f"{flops['original']:.4f}", f"{flops['compressed']:.4f}"
        rows.append(("FLOPs (GMACs)", before, after, f"x{flops['ratio']:.3f}"))
    if params:
        ratio = params["compressed"] / params["original"]
        rows.append(("parameters", f"{params['original']:,}", f"{params['compressed']:,}", f"x{ratio:.3f}"))
    body = html.table(("", "original", "compressed", "ratio"), rows)
    if flops:
        per_layer = flops["per_layer"]
        pngs["flops_per_layer.png"] = charts.flops_per_layer(per_layer["original"], per_layer["compressed"])
        body += html.img(pngs["flops_per_layer.png"], "GMACs per layer")
        body += html.paragraph("FLOPs are multiply-accumulates (DiffRate's convention), at the reference input.")
    return html.Section("FLOPs and parameters", body, "compute")


def _fidelity(report: dict[str, Any]) -> html.Section | None:
    fidelity = report.get("fidelity")
    if not fidelity:
        return None
    baseline = fidelity.get("random_drop_baseline") or {}
    labels = {
        "cosine_mean": "output cosine (mean)",
        "cosine_min": "output cosine (worst sample)",
        "top1_agreement": "top-1 agreement with original",
        "kl_mean": "KL(original || compressed)",
    }
    rows = [
        (label, f"{fidelity[key]:.4f}", f"{baseline[key]:.4f}" if key in baseline else "-")
        for key, label in labels.items()
        if key in fidelity
    ]
    headers = ("metric", "compressed", "random token drop, same counts")
    intro = html.paragraph(f"Measured by `tokcomp compile` on {fidelity['samples']} samples of {fidelity['data']}.")
    body = intro + _low_fidelity(fidelity) + html.table(headers, rows)
    return html.Section("Fidelity to the original", body, "fidelity")


def _results(files: list[ResultFile]) -> list[html.Section]:
    from tokcomp.evaluation import table as eval_table

    sections = []
    for result in files:
        if result.error:
            sections.append(html.Section(result.path.name, html.note(result.error)))
        elif result.kind == "tokcomp-eval":
            caption = eval_table.caption(result.data)
            body = html.paragraph(eval_table.title(result.data))
            body += html.table(eval_table.HEADERS, eval_table.metric_rows(result.data))
            body += html.paragraph(caption) if caption else ""
            body += "".join(html.note(n) for n in result.data.get("notes", []))
            body += _low_fidelity(result.data.get("fidelity"))
            sections.append(html.Section(f"Evaluation ({result.path.name})", body, result.path.stem))
        else:
            body = _generic(result.data)
            if isinstance(result.data, dict) and result.data.get("noisy"):  # tokcomp bench on a busy machine
                body = html.warning("noisy: a busy machine or timings varying run to run; re-run on a quiet one") + body
            sections.append(html.Section(f"Results ({result.path.name})", body, result.path.stem))
    return sections


def _pass_reports(report: dict[str, Any]) -> list[html.Section]:
    return [
        html.Section(f"Pass report: {key}", _generic(value), f"pass-{key}")
        for key, value in report.items()
        if key not in _KNOWN_REPORT_KEYS and value is not None
    ]


def _generic(data: Any) -> str:
    rows = flatten(data)
    body = html.table(("key", "value"), rows[:MAX_ROWS])
    if len(rows) > MAX_ROWS:
        body += html.note(f"{len(rows) - MAX_ROWS} more values are in the JSON file.")
    return body


def _merge_maps(
    folder: Path, state: CheckpointState, report: dict, images: int, data: str | None, seed: int, pngs: dict
) -> tuple[html.Section, list[MergeMap]]:
    from tokcomp.checkpoint import open_checkpoint
    from tokcomp.data import load_samples
    from tokcomp.evaluation.models import load_processor
    from tokcomp.surgery import token_blocks

    title, anchor = "Merge maps", "merge-maps"
    if images <= 0:
        return html.Section(title, html.note("skipped (--images 0)."), anchor), []
    model = open_checkpoint(folder).model
    if not token_blocks(model):
        return html.Section(title, html.note("no token reduction pass: every patch stays its own token."), anchor), []
    processor = load_processor(folder, "image")
    samples = load_samples(data or _default_images(report), "image", images, seed)
    try:
        maps = trace_merge_maps(model, samples, processor)
    except ValueError as exc:  # a model whose tokens do not map onto a patch grid
        return html.Section(title, html.note(f"cannot draw merge maps: {exc}"), anchor), []
    figures = []
    for index, merge_map in enumerate(maps, start=1):
        scale = scale_for(merge_map.image)
        pngs[f"merge_input_{index:02d}.png"] = png_bytes(merge_map.image)  # the browser scales it up
        pngs[f"merge_map_{index:02d}.png"] = png_bytes(render(merge_map, scale))
        dropped = f", {merge_map.dropped} patches dropped" if merge_map.dropped else ""
        caption = (
            f"{merge_map.name}: {merge_map.regions} regions from {merge_map.patches} patches "
            f"({merge_map.final_tokens} final tokens{dropped})"
        )
        figures.append(
            '<figure><div class="pair">'
            + html.img(pngs[f"merge_input_{index:02d}.png"], f"input {merge_map.name}")
            + html.img(pngs[f"merge_map_{index:02d}.png"], f"merge map {merge_map.name}", "map")
            + f"</div><figcaption>{html.esc(caption)}</figcaption></figure>"
        )
    pngs["merge_maps.png"] = png_bytes(side_by_side(maps))  # all pairs in one picture, for slides and READMEs
    intro = html.paragraph(
        "Left: the model's input as it saw it (resized and cropped). Right: every region is the set of patches "
        "one final token stands for, filled with its mean colour and outlined in a colour of its own; "
        "dropped patches are dimmed."
    )
    return html.Section(title, intro + '<div class="maps">' + "".join(figures) + "</div>", anchor), maps


def _default_images(report: dict[str, Any]) -> str:
    """The images compile measured fidelity on, when they are still there; else the zoo's."""
    data = (report.get("fidelity") or {}).get("data")
    if data and (data.startswith("zoo:") or Path(data).exists()):
        return data
    return "zoo:images"
