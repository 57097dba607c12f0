"""`rates: learned`: per-block rates of a merging pass searched for a FLOPs target, scored without labels.

A pass with `target_flops` and `rates: constant` (the default) removes the same r tokens in
every block, ToMe's schedule. With `rates: learned` the tokens kept after every selected block
are searched (calibrate/share_search.py): shapes scaled to the target FLOPs, so every candidate
costs the same, scored by the model's own fidelity score on calibration data, the constant-r
schedule among the starts, so the result never scores worse than it on its calibration data.

Scores by modality:
- audio (Whisper): KL(original || compressed) on the original's teacher-forced greedy
  transcripts of calibration clips (calibrate/speech.py).
Image and text encoders learn their rates with the `diffrate` pass (gradient search) instead.

The pass records the result as its `r_per_layer`, so a checkpoint reloads like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.errors import RecipeError
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.schedule import tokens_after_layers
from tokcomp.surgery.adapters.base import Geometry

if TYPE_CHECKING:  # the passes import this module
    from tokcomp.passes.budget import ReducerFactory


def removals_for(shares: Sequence[float], selected: list[bool], input_tokens: int, protected: int) -> list[int]:
    """Tokens each block removes at the reference input so that, after the k-th selected block, `shares[k]` of
    the reducible tokens remain (unselected blocks remove none)."""
    reducible, tokens, removals, slot = input_tokens - protected, input_tokens, [], 0
    for chosen in selected:
        if not chosen:
            removals.append(0)
            continue
        after = protected + round(shares[slot] * reducible)
        removals.append(max(tokens - after, 0))
        tokens, slot = min(tokens, after), slot + 1
    return removals


def starts(constant_r: list[int], selected: list[bool], geometry: Geometry, protected: int) -> dict[str, list[float]]:
    """Named shapes over the selected blocks: constant r (the pass's own schedule), uniform decay,
    front- and back-loaded."""
    from tokcomp.calibrate.share_search import weights_of

    reducible = geometry.input_tokens - protected
    tokens, shares = geometry.input_tokens, []
    for r, chosen in zip(constant_r, selected, strict=True):
        tokens -= r
        if chosen:
            shares.append((tokens - protected) / reducible)
    slots = len(shares)
    return {
        "constant r": weights_of(shares),
        "uniform decay": [1.0] * slots,
        "front-loaded": [float(slots - i) for i in range(slots)],
        "back-loaded": [float(i + 1) for i in range(slots)],
    }


def learn_removals(
    model,
    config,
    selected: list[bool],
    geometry: Geometry,
    protected: int,
    make_reducers: ReducerFactory,
    install: Callable[[Sequence[Reducer | None]], None],
    constant_r: list[int],
    ctx,
    pass_name: str,
) -> tuple[list[int], dict[str, Any]]:
    """(tokens removed per block at the reference input, the search's report) for `rates: learned`."""
    from tokcomp.calibrate.share_search import achieved_cut, search_shares

    scorer, calibration = _scorer(model, config, ctx, pass_name)
    original_macs = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    target_macs = resolve_flops_target(config.target_flops, original_macs)

    def reducers_for(shares: Sequence[float]) -> Sequence[Reducer | None]:
        return make_reducers(removals_for(shares, selected, geometry.input_tokens, protected))

    def macs_of(shares: Sequence[float]) -> int:
        reducers = reducers_for(shares)
        return model_macs(geometry, tokens_after_layers(geometry.input_tokens, reducers), reducers)

    def score(shares: Sequence[float]) -> float:
        install(reducers_for(shares))
        return scorer(model)

    search = config.search_settings
    result = search_shares(
        starts(constant_r, selected, geometry, protected),
        macs_of,
        score,
        target_macs,
        original_macs,
        search.evaluations,
        ctx.seed,
        f"{pass_name} rates",
    )
    # The removals the reducers actually make (a block's cap applied), as the pass records them.
    tokens = tokens_after_layers(geometry.input_tokens, reducers_for(result.shares))
    removals = [before - after for before, after in zip([geometry.input_tokens, *tokens], tokens, strict=False)]
    report = {
        "method": "discrete search over per-block kept shares at the target FLOPs (calibrate/share_search.py)",
        "score": "KL(original || compressed) on teacher-forced greedy transcripts (calibrate/speech.py)",
        "target_cut": achieved_cut(target_macs, original_macs),
        "achieved_cut": achieved_cut(result.achieved_macs, original_macs),
        "target_gmacs": target_macs / 1e9,
        "achieved_gmacs": result.achieved_macs / 1e9,
        "original_gmacs": original_macs / 1e9,
        "calibration": calibration,
        "kl": result.score,
        "kept": result.kept,
        "candidates": [{"kind": c["kind"], "kl": c["score"], "shares": c["shares"]} for c in result.candidates],
        "search_seconds": round(result.seconds, 1),
    }
    return removals, report


def _scorer(model, config, ctx, pass_name: str):
    """The fidelity score of this model's modality (lower is better), and what it calibrates on."""
    from tokcomp.calibrate.speech import TranscriptFidelity, calibration_clips

    modality = ctx.input_spec.modality
    if modality != "audio":
        raise RecipeError(
            f"{pass_name} rates: learned is available for speech encoders; this is a {modality} model",
            hint="use the diffrate pass to learn per-block rates of image and text encoders",
        )
    processor = None if ctx.loaded is None else ctx.loaded.processor
    if processor is None:
        raise RecipeError(
            f"{pass_name} rates: learned needs the model's processor and calibration clips",
            hint="run it from a recipe (tokcomp compile), or give the learned r list as `r: [...]`",
        )
    search = config.search_settings
    data = None if ctx.calibration is None else ctx.calibration.data
    name, clips = calibration_clips(model, data, search.clips, ctx.seed)
    scorer = TranscriptFidelity(model, processor, clips, search.max_new_tokens)
    calibration = {"data": name, "clips": len(clips), "max_new_tokens": search.max_new_tokens}
    return scorer, calibration
