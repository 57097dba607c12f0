"""Pass `diffrate`: DiffRate prune + merge with per-layer kept counts, searched or given.

    - {type: diffrate, target_flops: "-35%"}            # search the counts on calibration data
    - {type: diffrate, target_flops: 2.9G, granularity: 4, epochs: 3, lr: 0.01, lambda: 100, loss: auto}
    - {type: diffrate, schedule: {prune: [197, 196, ...], merge: [197, 194, ...]}}   # known counts
    - merge_rule: importance (DiffRate's) | bipartite (ToMe's matching decides which tokens merge)
      | learned (bipartite counts, then each block's rule chosen among merge_choices on the calibration data)

Counts include the protected tokens (CLS, distillation); tokens after block l are
min(previous, prune[l], merge[l]). With DiffRate's merge rule the search leaves block 0
alone, as DiffRate does (its CLS attention there ranks nothing yet); the bipartite rule
merges by similarity, which ToMe already uses from block 0, so the search includes it.
The metadata records `prune_kept` / `merge_kept` (and with `learned`, `merge_rules`: one
rule per block), so a checkpoint rebuilds the model without data. Version 2 added
`merge_rules`; version-1 records restore exactly as before.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.calibrate.settings import LEARNED, LEARNED_COUNT_RULE, SEARCH_KEYS, SearchSettings
from tokcomp.errors import RecipeError, TokcompError
from tokcomp.passes.base import Pass, PassConfig, StrictModel, register_pass, select_blocks
from tokcomp.passes.context import PassContext
from tokcomp.passes.token_reduction import BlockSite, geometry_of, token_metadata
from tokcomp.reducers.diffrate import bipartite_sources, diffrate_reducers
from tokcomp.surgery.adapters.base import Geometry

# Checkpoints written before merge_rule existed used DiffRate's rule: restore falls back to it.
LEGACY_MERGE_RULE = "importance"
DEFAULT_MERGE_RULE = "bipartite"  # chosen on calibration data: docs/diffrate.md, "Merge rules"
MergeChoiceName = Literal["importance", "bipartite", "bipartite_keys", "spread"]  # reducers.diffrate.MERGE_RULES


class DiffRateSchedule(StrictModel):
    prune: list[int] = Field(description="kept tokens after pruning in each block, protected tokens included")
    merge: list[int] = Field(description="kept tokens after merging in each block, protected tokens included")


class DiffRateConfig(PassConfig):
    # `lambda` is a Python keyword: the field is lambda_, written and read back as "lambda".
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    target_flops: float | str | None = Field(
        default=None, description='search for this budget: a fraction (0.62), a cut ("-38%") or GMACs ("2.9G")'
    )
    schedule: DiffRateSchedule | None = Field(default=None, description="apply these kept counts; no search")
    # Search settings; None means SearchSettings' default (a fixed schedule takes none of them).
    granularity: int | None = Field(default=None, ge=1, description="step between candidate kept counts (4)")
    epochs: int | None = Field(default=None, ge=1, description="passes over the calibration data (3)")
    lr: float | None = Field(
        default=None, gt=0, description="AdamW learning rate of the rate logits, cosine decay (0.01)"
    )
    lr_min: float | None = Field(default=None, ge=0, description="learning rate at the end of the decay (0.001)")
    lambda_: float | None = Field(
        default=None, gt=0, alias="lambda", description="weight of ((FLOPs - target) / original FLOPs)^2 (100)"
    )
    loss: Literal["auto", "kl", "cosine", "ce"] | None = Field(
        default=None, description="auto: KL on logits for classifiers, cosine on the pooled output otherwise"
    )
    start: Literal["auto"] | Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="schedule shape the search starts from: auto = the best of several on the calibration data, "
        "or a power (1 = ToMe's constant r, > 1 back-loaded, < 1 front-loaded) (auto)",
    )
    merge_rule: Literal["importance", "bipartite", "learned"] = Field(
        default=DEFAULT_MERGE_RULE,
        description="which kept tokens merge: importance = the least CLS-attended (DiffRate's rule), "
        "bipartite = ToMe's matching over the importance-sorted tokens, learned = bipartite counts, then "
        "each block's rule chosen among merge_choices on the calibration data (docs/diffrate.md)",
    )
    merge_choices: list[MergeChoiceName] | None = Field(
        default=None,
        min_length=1,
        description="merge_rule learned: the rules each block chooses from (bipartite, bipartite_keys, spread)",
    )
    proportional_attention: bool = True

    @model_validator(mode="after")
    def _search_or_schedule(self):
        if (self.target_flops is None) == (self.schedule is None):
            raise ValueError(
                "give exactly one of 'target_flops' (search) and 'schedule' ({prune: [...], merge: [...]})"
            )
        if self.merge_rule == LEARNED and self.schedule is not None:
            raise ValueError("merge_rule: learned chooses each block's rule by a search: give target_flops")
        if self.merge_choices is not None and self.merge_rule != LEARNED:
            raise ValueError("merge_choices only apply to merge_rule: learned")
        if self.schedule is not None:
            given = [("lambda" if k == "lambda_" else k) for k in SEARCH_KEYS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to a search (target_flops), not to a fixed schedule")
            if len(self.schedule.prune) != len(self.schedule.merge):
                prune, merge = len(self.schedule.prune), len(self.schedule.merge)
                raise ValueError(f"schedule.prune has {prune} values but schedule.merge has {merge}")
        return self

    def search_settings(self, target_macs: int) -> SearchSettings:
        """The search's settings: the keys this recipe gives, SearchSettings' defaults for the rest."""
        given = {key: getattr(self, key) for key in SEARCH_KEYS if getattr(self, key) is not None}
        if "merge_choices" in given:
            given["merge_choices"] = tuple(dict.fromkeys(given["merge_choices"]))
        return SearchSettings(
            target_macs=target_macs,
            proportional_attention=self.proportional_attention,
            merge_rule=self.merge_rule,
            **given,
        )


@register_pass
class DiffRatePass(Pass):
    name = "diffrate"
    version = 2  # 2: merge_rule learned and its per-block `merge_rules`
    Config = DiffRateConfig
    summary = "DiffRate: prune by CLS attention, then merge, to learned per-layer kept counts"

    def apply(self, model, config: DiffRateConfig, ctx: PassContext) -> dict[str, Any]:
        site = BlockSite.prepare(model, self.name)
        site.require_cls(self.name)
        geometry = geometry_of(model, ctx.input_spec)
        selected = select_blocks(site.names, config)
        search_report, rules = None, None
        if config.schedule is not None:
            prune, merge = list(config.schedule.prune), list(config.schedule.merge)
            _check_schedule(prune, merge, selected, site, geometry, config.merge_rule)
        else:
            prune, merge, rules, search_report = _search(model, site, geometry, selected, config, ctx)
        reducers = _reducers(prune, merge, site.protected, geometry.input_tokens, config.merge_rule, rules)
        site.install(reducers, config.proportional_attention)
        metadata = {
            **token_metadata(site, geometry, reducers),
            "prune_kept": prune,
            "merge_kept": merge,
            "merge_rule": config.merge_rule,
        }
        if rules is not None:
            metadata["merge_rules"] = rules
        if search_report is not None:
            metadata["report"] = search_report
        return metadata

    def restore(self, model, config: DiffRateConfig, metadata: dict[str, Any]) -> None:
        site = BlockSite.prepare(model, self.name)
        reducers = _reducers(
            metadata["prune_kept"],
            metadata["merge_kept"],
            metadata["protected"],
            metadata["input_tokens"],
            metadata.get("merge_rule", LEGACY_MERGE_RULE),
            metadata.get("merge_rules"),
        )
        site.install(reducers, config.proportional_attention)


def _reducers(
    prune: list[int], merge: list[int], protected: int, input_tokens: int, merge_rule: str, rules: list[str] | None = None
):
    """The blocks' reducers; with merge_rule learned, `rules` gives each block's rule (bipartite counts)."""
    count_rule = LEARNED_COUNT_RULE if merge_rule == LEARNED else merge_rule
    return diffrate_reducers(prune, merge, protected, input_tokens, count_rule, rules)


def _check_schedule(
    prune: list[int],
    merge: list[int],
    selected: list[bool],
    site: BlockSite,
    geometry: Geometry,
    merge_rule: str,
) -> None:
    blocks = len(site.blocks)
    if len(prune) != blocks:
        raise RecipeError(f"schedule.prune / schedule.merge list {len(prune)} values but the model has {blocks} blocks")
    too_small = [(i, v) for i, v in enumerate(prune + merge) if v <= site.protected]
    if too_small:
        index, value = too_small[0]
        key = "prune" if index < blocks else "merge"
        raise RecipeError(
            f"schedule.{key}[{index % blocks}] = {value}: every count must keep more than the "
            f"{site.protected} protected token(s)"
        )
    tokens = geometry.input_tokens
    for i, (p, m) in enumerate(zip(prune, merge, strict=True)):
        if min(p, m) < tokens and not selected[i]:
            raise RecipeError(
                f"schedule reduces tokens in block {site.names[i]}, which targets / ignore leave out",
                hint=f"give it {tokens} (no reduction) or select it",
            )
        pruned = min(tokens, p)
        if merge_rule == "bipartite" and m < pruned - bipartite_sources(pruned, site.protected):
            floor = pruned - bipartite_sources(pruned, site.protected)
            raise RecipeError(
                f"schedule.merge[{i}] = {m}: bipartite merging of {pruned} tokens keeps at least {floor} "
                "(only the unprotected even-position tokens can merge)",
                hint="use merge_rule: importance (DiffRate's rule, as in the published schedules) "
                f"or a merge count >= {floor}",
            )
        tokens = min(tokens, p, m)


def _search(model, site: BlockSite, geometry: Geometry, selected: list[bool], config: DiffRateConfig, ctx):
    from tokcomp.calibrate import calibration_batches, distributed, print_schedule, search_rates
    from tokcomp.recipe import CalibrationSpec

    if ctx.loaded is None or ctx.loaded.processor is None:
        raise TokcompError(
            "the DiffRate search (target_flops) needs calibration data and the model's preprocessing",
            hint="run it from a recipe (tokcomp compile), or apply a known {type: diffrate, schedule: ...}",
        )
    searched = [chosen and (index > 0 or config.merge_rule != "importance") for index, chosen in enumerate(selected)]
    if not any(searched):
        raise RecipeError(
            "targets / ignore leave only block 0, which the search leaves alone with merge_rule: importance",
            hint="select more blocks, or use merge_rule: bipartite",
        )
    distributed.ensure_process_group()
    spec = ctx.calibration or CalibrationSpec()
    original = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    settings = config.search_settings(resolve_flops_target(config.target_flops, original))
    batches, samples = calibration_batches(
        spec, model, ctx.loaded.processor, ctx.input_spec, ctx.seed, settings.loss == "ce"
    )
    result = search_rates(
        model, site.blocks, searched, site.protected, geometry, batches, settings, ctx.loaded.pooling, ctx.seed,
        install=lambda reducers: site.install(reducers, config.proportional_attention),
    )  # fmt: skip
    print_schedule(geometry, result.prune_kept, result.merge_kept)
    report = {
        "target_gmacs": result.target_macs / 1e9,
        "achieved_gmacs": result.achieved_macs / 1e9,
        "original_gmacs": result.original_macs / 1e9,
        "loss": result.loss,
        "settings": settings.report(),
        "calibration": {"data": spec.forward_loop or spec.data, "samples": samples, "augment": spec.augment},
        "start": result.start,
        "start_schedule": result.start_schedule,
        "epochs": result.epochs,
        "kept": result.kept,
        "steps": result.steps,
        "processes": result.world_size,
        "search_seconds": round(result.seconds, 1),
    }
    if result.merge_rules is not None:
        report["merge_choice"] = result.merge_choice
    return result.prune_kept, result.merge_kept, result.merge_rules, report
