"""The DiffRate rate search: learn per-layer prune and merge counts under a FLOPs target.

Only the rate logits train; the model's weights stay frozen. Each step:
    plan = rates()                    # soft masks + straight-through counts
    out  = model(batch)               # search reducers mask tokens in place
    loss = task(out, original) + lambda * ((FLOPs(plan) - target) / FLOPs(original))^2
The FLOPs penalty is relative to the original model, so one lambda fits every model
size (DiffRate's lambda = 5 on GMACs is lambda ~ 106 here for DeiT-S). AdamW, no
weight decay, cosine decay from lr to lr_min over all steps. The original model's
outputs are computed once per batch (reducers off) and reused every epoch.

The logits start centred on the schedule shape that scores best on the first
SCORE_BATCHES batches (start.py). After every epoch the read-out counts are scored on
the same batches, and the best-scoring counts are kept, the start's included: DiffRate's
straight-through gradient is first order and can trade merging for pruning that costs
more than it estimates (docs/diffrate.md), so the search never returns counts that
score worse on its own data than where it began.

With merge_rule `learned`, the counts found are kept and every block's merge rule is
then chosen among `merge_choices` (merge_choice.py), scored the same way on the same batches
with the real reducers installed.

Under torchrun the rate logits are wrapped in DistributedDataParallel and each rank
steps through its own equal shard of batches.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokcomp.analysis.flops import model_macs
from tokcomp.calibrate import distributed
from tokcomp.calibrate.budget import fit_to_macs, per_block_lists, tokens_per_block
from tokcomp.calibrate.loss import LossName, resolve_loss, task_loss, teacher_target
from tokcomp.calibrate.merge_choice import MergeChoice, choose_rules, trial_count
from tokcomp.calibrate.rates import RateParameters, RatePlan, fixed_plan
from tokcomp.calibrate.soft_reducer import SearchTrace, SoftDiffRate
from tokcomp.calibrate.settings import LEARNED, SearchSettings
from tokcomp.calibrate.start import SCORE_BATCHES, StartCandidate, choose_start, start_candidates
from tokcomp.pooling import run_with_token_weights
from tokcomp.progress import info, progress_bar
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.diffrate import diffrate_reducers
from tokcomp.surgery.adapters.base import Geometry
from tokcomp.surgery.block import TokenBlock


# Counts are eligible to be returned within this fraction of the target FLOPs.
TARGET_TOLERANCE = 0.01


@dataclass
class SearchResult:
    prune_kept: list[int]  # per block, protected tokens included; non-increasing
    merge_kept: list[int]  # per block; tokens after block l = merge_kept[l]
    loss: str  # the task loss that was used
    original_macs: int
    target_macs: int
    achieved_macs: int
    steps: int
    world_size: int
    seconds: float
    epochs: list[dict] = field(default_factory=list)  # mean task loss, GMACs and read-out score per epoch
    start: list[dict] = field(default_factory=list)  # start shapes: power, score, tokens; the chosen one flagged
    kept: str = ""  # whose counts were kept: "start" or "epoch k" (the best score)
    start_schedule: dict = field(default_factory=dict)  # the chosen start's prune_kept / merge_kept per block
    merge_rules: list[str] | None = None  # merge_rule learned: the rule chosen for every block
    merge_choice: dict = field(default_factory=dict)  # merge_rule learned: scores of the start and every trial


@dataclass
class _Batch:
    inputs: dict[str, Tensor]
    labels: Tensor | None
    target: Tensor | None = None  # the original model's contribution to the loss


def search_rates(
    model: nn.Module,
    blocks: list[TokenBlock],
    searched: list[bool],
    protected: int,
    geometry: Geometry,
    batches: list[dict[str, Tensor]],
    settings: SearchSettings,
    pooling: str,
    seed: int = 0,
    install: Callable[[list[Reducer | None]], None] | None = None,
) -> SearchResult:
    """Search kept counts for the blocks flagged in `searched`; `batches` are this rank's share.

    `install` puts one reducer per block (None: none) into the model; merge_rule learned needs it
    to score each block's candidate rules, and leaves the last candidate scored installed.
    """
    if settings.merge_rule == LEARNED and install is None:
        raise ValueError("merge_rule learned installs candidate reducers: pass `install`")
    started = time.perf_counter()
    torch.manual_seed(seed)
    layers = [i for i, chosen in enumerate(searched) if chosen]
    candidates = start_candidates(
        geometry, layers, protected, settings.target_macs, settings.count_rule, settings.start_powers
    )
    search = _Search(model, layers, geometry, settings, pooling, protected)
    data = [_Batch({k: v for k, v in b.items() if k != "labels"}, b.get("labels")) for b in batches]

    with _search_mode(model, blocks, layers, search.trace, protected, settings, search.device):
        search.loss_name = _teacher_targets(model, data, settings.loss, pooling, search.device)
        scoring = data[:SCORE_BATCHES]
        start = search.choose_start(candidates, scoring)
        search.begin(
            RateParameters(
                len(layers), geometry.input_tokens, protected, settings.granularity,
                (start.prune, start.merge), settings.count_rule,
            )
        )  # fmt: skip
        # Equal compute for comparisons: every count the search could return is fitted to within 0.5% of the
        # target FLOPs (calibrate/budget.py) before it is scored.
        start_prune, start_merge = start.counts[0], search.fit(*start.counts)
        start_score = start.score
        if start_merge != list(start.counts[1]):
            start_score = search.score_counts(start_prune, start_merge, scoring)
        options = [_Option("start", start_prune, start_merge, start_score, search.macs_of(start_merge))]
        history = []
        for epoch in range(settings.epochs):
            history.append(search.epoch(data, epoch, seed))
            prune, merge = search.rates.read_out()
            merge = search.fit(prune, merge)
            score = search.score_counts(prune, merge, scoring)
            option = _Option(f"epoch {epoch + 1}", prune, merge, score, search.macs_of(merge))
            history[-1].update(score=option.score, read_out_gmacs=option.macs / 1e9)
            options.append(option)
        best = _best(options, settings.target_macs)
        kept, prune, merge = best.name, best.prune, best.tokens
        if kept == "start" and distributed.is_main_process():
            info(
                "[yellow]DiffRate: keeping the start's counts: no epoch's read-out within 1% of the target "
                "FLOPs scored better on the scoring batches (report.json: diffrate.epochs, diffrate.start)"
            )

    prune_kept, merge_kept = per_block_lists(prune, merge, layers, geometry)
    prune_kept, merge_kept = distributed.broadcast_ints(prune_kept), distributed.broadcast_ints(merge_kept)
    choice = None
    if settings.merge_rule == LEARNED:
        choice = search.choose_merge_rules(prune_kept, merge_kept, data[:SCORE_BATCHES], install)
    return SearchResult(
        prune_kept=prune_kept,
        merge_kept=merge_kept,
        loss=search.loss_name,
        original_macs=search.original_macs,
        target_macs=settings.target_macs,
        achieved_macs=model_macs(geometry, merge_kept),
        steps=settings.epochs * len(data),
        world_size=distributed.world_size(),
        seconds=time.perf_counter() - started,
        epochs=history,
        start=[
            {"power": c.power, "score": c.score, "tokens": [round(m, 1) for m in c.merge], "chosen": c is start}
            for c in candidates
        ],
        kept=kept,
        start_schedule=dict(zip(("prune_kept", "merge_kept"), per_block_lists(start_prune, start_merge, layers, geometry))),
        merge_rules=None if choice is None else choice.rules,
        merge_choice={} if choice is None else {**choice.report(), "search_score": best.score},
    )


@dataclass
class _Option:
    """Counts the search could return: the start's or an epoch's read-out, with their score."""

    name: str
    prune: list[int]
    tokens: list[int]
    score: float
    macs: int


def _best(options: list[_Option], target_macs: int) -> _Option:
    """The best-scoring option within TARGET_TOLERANCE of the target FLOPs (the closest to it if none is)."""
    eligible = [o for o in options if abs(o.macs - target_macs) <= TARGET_TOLERANCE * target_macs]
    if not eligible:
        return min(options, key=lambda o: abs(o.macs - target_macs))
    return min(eligible, key=lambda o: o.score)


class _Search:
    """One search's moving parts: trace, then (begin) rates (DDP-wrapped when distributed) and optimiser."""

    def __init__(
        self, model, layers: list[int], geometry: Geometry, settings: SearchSettings, pooling: str, protected: int
    ):
        self.device = distributed.device()
        self.protected = protected
        self.model, self.layers, self.geometry = model, layers, geometry
        self.settings, self.pooling = settings, pooling
        self.trace = SearchTrace()
        self.original_macs = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
        self.loss_name = ""
        self.steps_done = 0

    def begin(self, rates: RateParameters) -> None:
        self.rates = rates.to(self.device)
        self.stepper = _wrap(self.rates, self.device)
        self.optimizer = torch.optim.AdamW(self.rates.parameters(), lr=self.settings.lr, weight_decay=0.0)

    def choose_start(self, candidates: list[StartCandidate], data: list[_Batch]) -> StartCandidate:
        """The best-scoring start shape on `data` (every rank scores its share; scores are averaged)."""
        with _progress("DiffRate start shapes", len(candidates)) as advance:

            def score(candidate: StartCandidate) -> float:
                loss = self.score_counts(*candidate.counts, data)
                advance(f"power {candidate.power:g}: loss {loss:.4f}")
                return loss

            return choose_start(candidates, score)

    @torch.no_grad()
    def score_counts(self, prune: list[int], tokens: list[int], data: list[_Batch]) -> float:
        """Mean task loss over `data` of the model with these integer counts, averaged across ranks."""
        plan = RatePlan(*(t.to(self.device) for t in fixed_plan(prune, tokens, self.geometry.input_tokens)))
        losses = [self._task(plan, batch).item() for batch in data]
        return distributed.mean_across_ranks(sum(losses) / len(losses))

    def choose_merge_rules(
        self, prune_kept: list[int], merge_kept: list[int], data: list[_Batch], install: Callable
    ) -> MergeChoice:
        """Every reducing block's merge rule among settings.merge_choices, the counts fixed (merge_choice.py)."""
        count_rule, input_tokens = self.settings.count_rule, self.geometry.input_tokens
        options = {
            rule: diffrate_reducers(prune_kept, merge_kept, self.protected, input_tokens, count_rule, [rule] * len(prune_kept))
            for rule in dict.fromkeys((count_rule, *self.settings.merge_choices))
        }
        reducing = [block for block, reducer in enumerate(options[count_rule]) if reducer is not None]
        start = [count_rule] * len(prune_kept)

        def score(rules: list[str]) -> float:
            install([options[rule][block] for block, rule in enumerate(rules)])
            return self.score_installed(data)

        total = trial_count(start, reducing, self.settings.merge_choices) + 1
        with _scoring_mode(self.model, self.device), _progress("DiffRate merge rules", total) as advance:
            return choose_rules(start, reducing, self.settings.merge_choices, score, advance)

    @torch.no_grad()
    def score_installed(self, data: list[_Batch]) -> float:
        """Mean task loss over `data` of the model with the reducers now installed, averaged across ranks."""
        losses = []
        for batch in data:
            output, weights = run_with_token_weights(self.model, **{k: v.to(self.device) for k, v in batch.inputs.items()})
            labels = None if batch.labels is None else batch.labels.to(self.device)
            weights = weights if self.pooling == "mean" else None
            losses.append(task_loss(output, self.loss_name, batch.target, labels, self.pooling, weights).item())
        return distributed.mean_across_ranks(sum(losses) / len(losses))

    def fit(self, prune: list[int], merge: list[int]) -> list[int]:
        return fit_to_macs(prune, list(merge), self.layers, self.geometry, self.settings.target_macs, self.protected)

    def macs_of(self, tokens: list) -> int | Tensor:
        """Model MACs with these tokens after the searched layers (ints, or tensors that carry a gradient)."""
        return model_macs(self.geometry, tokens_per_block(tokens, self.layers, self.geometry))

    def _task(self, plan: RatePlan, batch: _Batch) -> torch.Tensor:
        self.trace.begin(plan)
        output = self.model(**{k: v.to(self.device) for k, v in batch.inputs.items()})
        labels = None if batch.labels is None else batch.labels.to(self.device)
        weights = self.trace.pooling_weights() if self.pooling == "mean" else None
        return task_loss(output, self.loss_name, batch.target, labels, self.pooling, weights)

    def epoch(self, data: list[_Batch], epoch: int, seed: int) -> dict:
        order = random.Random(seed * 1000 + epoch).sample(range(len(data)), len(data))
        losses, flops = [], []
        target = self.settings.target_macs / 1e9
        with _progress(f"DiffRate epoch {epoch + 1}/{self.settings.epochs}", len(data)) as advance:
            for index in order:
                task, macs = self.step(data[index], total=self.settings.epochs * len(data))
                losses.append(task)
                flops.append(macs)
                advance(f"loss {task:.4f}  {macs / 1e9:.3f}/{target:.3f} GMACs")
        return {
            "epoch": epoch + 1,
            "task_loss": distributed.mean_across_ranks(sum(losses) / len(losses)),
            "gmacs": sum(flops) / len(flops) / 1e9,
        }

    def step(self, batch: _Batch, total: int) -> tuple[float, float]:
        self._set_lr(total)
        plan = self.stepper()
        task = self._task(plan, batch)
        macs = self.macs_of(list(plan.tokens))
        penalty = self.settings.lambda_ * ((macs - self.settings.target_macs) / self.original_macs) ** 2
        self.optimizer.zero_grad(set_to_none=True)
        (task + penalty).backward()
        self.optimizer.step()
        self.steps_done += 1
        return task.item(), macs.item()

    def _set_lr(self, total: int) -> None:
        """Cosine decay from lr to lr_min over all steps."""
        s = self.settings
        progress = self.steps_done / max(1, total - 1)
        lr = s.lr_min + (s.lr - s.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def _wrap(rates: RateParameters, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the rate logits when running under torchrun."""
    if distributed.world_size() == 1:
        return rates
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(rates, device_ids=ids)


@torch.no_grad()
def _teacher_targets(model, data: list[_Batch], loss: LossName, pooling: str, device) -> str:
    """The original model's outputs for every batch (search reducers off); returns the loss used."""
    blocks = [m for m in model.modules() if isinstance(m, TokenBlock)]
    saved = [b.reducer for b in blocks]
    for b in blocks:
        b.reducer = None
    try:
        name = None
        with _progress("original outputs", len(data)) as advance:
            for batch in data:
                inputs = {k: v.to(device) for k, v in batch.inputs.items()}
                output = model(**inputs)
                if name is None:
                    has_logits = getattr(output, "logits", None) is not None
                    name = resolve_loss(loss, has_logits, all(b.labels is not None for b in data))
                mask = inputs.get("attention_mask")
                weights = None if mask is None else mask.float()
                batch.target = None if name == "ce" else teacher_target(output, name, pooling, weights)
                advance("")
    finally:
        for b, reducer in zip(blocks, saved, strict=True):
            b.reducer = reducer
    return name


@contextlib.contextmanager
def _search_mode(model, blocks, layers, trace, protected, settings, device) -> Iterator[None]:
    """Install search reducers, force proportional attention (it carries the masks), freeze weights."""
    saved = [(b.reducer, b.proportional_attention) for b in blocks]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    was_training, home = model.training, next(model.parameters()).device
    for p, _ in grads:
        p.requires_grad_(False)
    for i, layer in enumerate(layers):
        blocks[layer].reducer = SoftDiffRate(
            i, trace, protected, settings.proportional_attention, settings.count_rule
        )
    for b in blocks:
        b.proportional_attention = True
    model.eval().to(device)
    try:
        yield
    finally:
        for b, (reducer, proportional) in zip(blocks, saved, strict=True):
            b.reducer, b.proportional_attention = reducer, proportional
        for p, flag in grads:
            p.requires_grad_(flag)
        model.train(was_training).to(home)
        trace.begin(None)


@contextlib.contextmanager
def _scoring_mode(model, device) -> Iterator[None]:
    """The model in eval mode on the search's device (weights untouched), put back afterwards."""
    was_training, home = model.training, next(model.parameters()).device
    model.eval().to(device)
    try:
        yield
    finally:
        model.train(was_training).to(home)


@contextlib.contextmanager
def _progress(label: str, total: int):
    """A progress bar on rank 0 (loss, FLOPs vs target, elapsed, ETA); yields advance(status)."""
    if not distributed.is_main_process():
        yield lambda status: None
        return
    with progress_bar() as bar:
        task = bar.add_task(label, total=total, status="")
        yield lambda status: bar.update(task, advance=1, status=status)
