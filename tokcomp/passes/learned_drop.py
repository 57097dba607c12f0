"""Pass `learned_drop`: prefill token drops with per-layer keep rates learned under a FLOPs target.

    - {type: learned_drop, target_flops: "-50%"}                  # search the rates on calibration prose
    - {type: learned_drop, target_flops: "-50%", prompts: 8, continuation: 16, evaluations: 40}
    - {type: learned_drop, keep: [1, 0.7, 0.7, ..., 0.2, 0.2]}    # known shares, one per layer: no search

After every layer each prompt keeps a share of its own reducible span (every prompt token but the first
`sink` and the last `question`, as in `fastv`), ranked by the attention its last token pays them
(reducers/attention_drop.py, FastV's rule); the shares are non-increasing, a drop may follow any layer
but the last, and kept tokens keep their original positions, order and KV-cache entries. The search
places drops after full-attention layers only (`search_layers`): a sliding-window layer's last token
sees only its window, so ranking there would drop the start of every longer prompt unseen.

The search (calibrate/prefill.py) is a discrete, KL-scored search over per-layer keep shares, not
DiffRate's gradient: every candidate is scaled to the FLOPs target and scored, without labels, by
KL(original || compressed) on the original's teacher-forced greedy continuations of calibration prompts
(`data: prose`: zoo:prose-calib, the split disjoint from the evaluation prose; `data: random`: random
token ids, for models without a tokenizer). Calibration prompts are `sequence_length` tokens long (the
reference input).

FLOPs: prefill multiply-accumulates of analysis/flops.py over the decoder geometry (q/k/v/o and gated
MLP per kept token, causal attention within each layer's window, the head once) at the reference prompt.
A target is a fraction, a cut ("-50%") or GMACs; the cut reached, 1 - MACs / original MACs, is within
2% (relative) of the cut asked. A cut above 95%, or one that only dropping protected tokens would
reach, is refused.

The checkpoint records the per-layer rates (tokens removed of those present, at the reference prompt,
reducers/rate.py), so it reloads without the recipe or data and every prompt length loses the same shares.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.errors import RecipeError, TokcompError
from tokcomp.passes.base import Pass, register_pass
from tokcomp.passes.fastv import (
    LastTokenRanking,
    cumulative_rates,
    decoder_site,
    install_drops,
    recorded_ranking,
    reference_reducible,
    set_span,
    warn_windowed_ranking,
)
from tokcomp.passes.token_reduction import BlockSite, token_metadata
from tokcomp.reducers.attention_drop import LastQueryAttentionDrop
from tokcomp.reducers.rate import Rate
from tokcomp.reducers.schedule import tokens_after_layers
from tokcomp.surgery.adapters.base import Geometry

MAX_CUT = 0.95  # a larger prefill FLOPs cut leaves too little of the model to calibrate


class LearnedDropConfig(LastTokenRanking):
    target_flops: float | str | None = Field(
        None, description='search for this prefill budget: a fraction (0.5), a cut ("-50%") or GMACs ("1.2G")'
    )
    keep: list[float] | None = Field(
        None, description="known kept share of the reducible span after every layer (non-increasing): no search"
    )
    data: Literal["prose", "random"] = Field(
        "prose", description="calibration prompts: prose (zoo:prose-calib, needs the tokenizer) or random token ids"
    )
    prompts: int = Field(8, ge=1, description="calibration prompts (sequence_length tokens each)")
    continuation: int = Field(16, ge=1, description="teacher-forced continuation tokens scored per prompt")
    evaluations: int = Field(40, ge=1, description="schedules the search scores on the calibration prompts")
    search_layers: Literal["full_attention", "all"] = Field(
        "full_attention",
        description="layers a searched drop may follow: full_attention skips sliding-window layers (their last "
        "token cannot see a prompt longer than the window, so it would drop the start unseen); all: any but the last",
    )

    @model_validator(mode="after")
    def _search_or_known(self):
        if (self.target_flops is None) == (self.keep is None):
            raise ValueError("give exactly one of 'target_flops' (search) and 'keep' (known per-layer shares)")
        return self


def drop_reducers(shares: list[float], reducible: int, protected: int) -> list[LastQueryAttentionDrop | None]:
    """One attention drop after every layer whose share falls (rates exact at the reference prompt)."""
    return [
        LastQueryAttentionDrop(rate, protected) if rate.removed else None
        for rate in cumulative_rates(shares, reducible)
    ]


def prefill_macs(geometry: Geometry, reducers: list) -> int:
    """Prefill MACs at the reference prompt with these reducers (analysis/flops.py's decoder count)."""
    return model_macs(geometry, tokens_after_layers(geometry.input_tokens, reducers))


def check_shares(shares: list[float], layers: int) -> None:
    if len(shares) != layers:
        raise RecipeError(f"learned_drop keep lists {len(shares)} shares but the model has {layers} layers")
    if any(not 0 <= s <= 1 for s in shares) or any(b > a for a, b in zip(shares, shares[1:], strict=False)):
        raise RecipeError(
            f"learned_drop keep {shares}: shares must lie in [0, 1] and never rise from one layer to the next"
        )
    if shares[-1] != shares[-2]:
        raise RecipeError("learned_drop keep: the last layer cannot drop (give it the share of the layer before)")


@register_pass
class LearnedDropPass(Pass):
    name = "learned_drop"
    version = 2  # 2: the ranking's pooling is recorded (version-1 records rank unpooled)
    Config = LearnedDropConfig
    summary = "Learned prefill drops: per-layer keep shares searched for a FLOPs target by KL on calibration prose"

    def apply(self, model, config: LearnedDropConfig, ctx) -> dict[str, Any]:
        site = decoder_site(model, self.name)
        if len(site.blocks) < 2:
            raise RecipeError("learned_drop needs at least 2 layers (a drop follows a layer, never the last)")
        set_span(site, config)
        geometry, reducible = reference_reducible(model, ctx, config, self.name)
        report = None
        if config.keep is not None:
            shares = list(config.keep)
            check_shares(shares, len(site.blocks))
        else:
            shares, report = _search(model, site, geometry, reducible, config, ctx)
        rates = cumulative_rates(shares, reducible)
        dropping = {i: rate for i, rate in enumerate(rates) if rate.removed}
        ranking = config.ranking()
        reducers = install_drops(site, ranking, dropping)
        warn_windowed_ranking(site, list(dropping), self.name)
        metadata = {
            "ranking": ranking.model_dump(),
            **token_metadata(site, geometry, reducers),
            "rates": [rate.to_json() if rate.removed else None for rate in rates],
            "keep": shares,
        }
        if report is not None:
            metadata["report"] = report
        return metadata

    def restore(self, model, config: LearnedDropConfig, metadata: dict[str, Any]) -> None:
        site = decoder_site(model, self.name)
        set_span(site, config)
        rates = {i: Rate(*rate) for i, rate in enumerate(metadata["rates"]) if rate is not None}
        install_drops(site, recorded_ranking(metadata), rates)


def search_slots(site: BlockSite, search_layers: str) -> list[int]:
    """Layer indices a searched drop may follow: never the last; with full_attention, no sliding-window layer."""
    allowed = [i for i, block in enumerate(site.blocks[:-1]) if search_layers == "all" or block.window is None]
    if not allowed:
        raise RecipeError(
            "learned_drop: every layer but the last has a sliding window, so no drop can rank over the whole prompt",
            hint="give search_layers: all (drops may lose tokens beyond the window), or known shares (keep: [...])",
        )
    return allowed


def resolve_target(
    target: float | str, original_macs: int, geometry: Geometry, reducible: int, protected: int, first: int = 0
) -> int:
    """The target as MACs; refuses a cut above MAX_CUT or beyond dropping the whole span after layer index `first`
    (the first layer a drop may follow)."""
    try:
        target_macs = resolve_flops_target(target, original_macs)
    except TokcompError as error:
        raise RecipeError(str(error)) from None
    cut = 1 - target_macs / original_macs
    if cut > MAX_CUT or cut < 0:
        raise RecipeError(
            f"learned_drop target_flops {target!r} is a prefill cut of {cut:.1%}; give a cut from 0% to {MAX_CUT:.0%}"
        )
    everything_after_first = [1.0] * first + [0.0] * (geometry.num_layers - first)
    floor = prefill_macs(geometry, drop_reducers(everything_after_first, reducible, protected))
    if target_macs < floor:
        raise RecipeError(
            f"learned_drop target_flops {target!r} ({cut:.1%} cut) would need to drop protected tokens: dropping the "
            f"whole span after layer {first + 1} cuts {1 - floor / original_macs:.1%}; lower the cut, sink or question"
        )
    return target_macs


def _search(model, site: BlockSite, geometry: Geometry, reducible: int, config: LearnedDropConfig, ctx):
    from tokcomp.calibrate.prefill import (
        ContinuationFidelity,
        prose_calibration_prompts,
        random_calibration_prompts,
        search_keep_shares,
    )
    from tokcomp.calibrate.share_search import achieved_cut

    protected = site.protected
    allowed = search_slots(site, config.search_layers)
    original_macs = prefill_macs(geometry, [None] * geometry.num_layers)
    target_macs = resolve_target(config.target_flops, original_macs, geometry, reducible, protected, allowed[0])
    length = geometry.input_tokens
    if config.data == "prose":
        tokenizer = None if ctx.loaded is None else ctx.loaded.processor
        if tokenizer is None:
            raise RecipeError(
                "learned_drop's search on prose needs the model's tokenizer: run it from a recipe (tokcomp compile)",
                hint="or give data: random, or known shares (keep: [...])",
            )
        prompts = prose_calibration_prompts(tokenizer, length, config.prompts, ctx.seed)
    else:
        prompts = random_calibration_prompts(model.config.vocab_size, length, config.prompts, ctx.seed)
    site.install([None] * len(site.blocks), proportional_attention=False)  # the original, for the reference
    scorer = ContinuationFidelity(model, prompts, config.continuation)
    ranking = config.ranking()

    def score(shares: list[float]) -> float:
        rates = cumulative_rates(shares, reducible)
        install_drops(site, ranking, {i: r for i, r in enumerate(rates) if r.removed})
        return scorer(model)

    result = search_keep_shares(
        geometry.num_layers,
        allowed,
        lambda shares: prefill_macs(geometry, drop_reducers(shares, reducible, protected)),
        score,
        target_macs,
        original_macs,
        config.evaluations,
        ctx.seed,
    )
    report = {
        "method": "discrete KL-scored search over per-layer keep shares (calibrate/prefill.py)",
        "drop_layers_allowed": [i + 1 for i in allowed],
        "target_cut": achieved_cut(target_macs, original_macs),
        "achieved_cut": achieved_cut(result.achieved_macs, original_macs),
        "target_gmacs": target_macs / 1e9,
        "achieved_gmacs": result.achieved_macs / 1e9,
        "original_gmacs": original_macs / 1e9,
        "calibration": {
            "data": "zoo:prose-calib" if config.data == "prose" else "random token ids",
            "prompts": len(prompts),
            "prompt_tokens": [int(p.shape[1]) for p in prompts],
            "continuation": config.continuation,
        },
        "kl": result.kl,
        "kept": result.kept,
        "candidates": result.candidates,
        "search_seconds": round(result.seconds, 1),
    }
    return result.shares, report
