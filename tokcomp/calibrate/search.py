"""The DiffRate rate search: learn per-layer prune and merge counts under a FLOPs target.

Only the rate logits train; the model's weights stay frozen. Each step:
    plan = rates()                    # soft masks + straight-through counts
    out  = model(batch)               # search reducers mask tokens in place
    loss = task(out, original) + lambda * ((FLOPs(plan) - target) / FLOPs(original))^2
The FLOPs penalty is relative to the original model, so one lambda fits every model
size (DiffRate's lambda = 5 on GMACs is lambda ~ 106 here for DeiT-S). AdamW, no
weight decay, cosine decay from lr to lr_min over all steps. The original model's
outputs are computed once per batch (reducers off) and reused every epoch.
Under torchrun the rate logits are wrapped in DistributedDataParallel and each rank
steps through its own equal shard of batches.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokcomp.analysis.flops import model_macs
from tokcomp.calibrate import distributed
from tokcomp.calibrate.budget import linear_start, per_block_lists, tokens_per_block
from tokcomp.calibrate.loss import LossName, resolve_loss, task_loss, teacher_target
from tokcomp.calibrate.rates import RateParameters
from tokcomp.calibrate.soft_reducer import SearchTrace, SoftDiffRate
from tokcomp.progress import progress_bar
from tokcomp.surgery.adapters.base import Geometry
from tokcomp.surgery.block import TokenBlock


@dataclass(frozen=True)
class SearchSettings:
    target_macs: int
    granularity: int = 4
    epochs: int = 3
    lr: float = 0.01
    lr_min: float = 0.001
    flops_weight: float = 100.0
    loss: LossName = "auto"
    proportional_attention: bool = True
    merge_rule: str = "importance"  # reducers.diffrate.MERGE_RULES


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
    epochs: list[dict] = field(default_factory=list)  # mean task loss and GMACs per epoch


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
) -> SearchResult:
    """Search kept counts for the blocks flagged in `searched`; `batches` are this rank's share."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    layers = [i for i, chosen in enumerate(searched) if chosen]
    start = linear_start(geometry, layers, protected, settings.target_macs, settings.merge_rule)
    rates = RateParameters(
        len(layers), geometry.input_tokens, protected, settings.granularity, start, settings.merge_rule
    )
    search = _Search(model, rates, layers, geometry, settings, pooling)
    data = [_Batch({k: v for k, v in b.items() if k != "labels"}, b.get("labels")) for b in batches]

    with _search_mode(model, blocks, layers, search.trace, protected, settings, search.device):
        search.loss_name = _teacher_targets(model, data, settings.loss, pooling, search.device)
        history = [search.epoch(data, epoch, seed) for epoch in range(settings.epochs)]
        prune, merge = rates.read_out()

    prune_kept, merge_kept = per_block_lists(prune, merge, layers, geometry)
    prune_kept, merge_kept = distributed.broadcast_ints(prune_kept), distributed.broadcast_ints(merge_kept)
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
    )


class _Search:
    """One search's moving parts: rates (DDP-wrapped when distributed), optimiser, trace."""

    def __init__(
        self,
        model,
        rates: RateParameters,
        layers: list[int],
        geometry: Geometry,
        settings: SearchSettings,
        pooling: str,
    ):
        self.device = distributed.device()
        self.model, self.layers, self.geometry = model, layers, geometry
        self.settings, self.pooling = settings, pooling
        self.rates = rates.to(self.device)
        self.stepper = _wrap(self.rates, self.device)
        self.optimizer = torch.optim.AdamW(self.rates.parameters(), lr=settings.lr, weight_decay=0.0)
        self.trace = SearchTrace()
        self.original_macs = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
        self.loss_name = ""
        self.steps_done = 0

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
        self.trace.begin(plan)
        output = self.model(**{k: v.to(self.device) for k, v in batch.inputs.items()})
        labels = None if batch.labels is None else batch.labels.to(self.device)
        weights = self.trace.pooling_weights() if self.pooling == "mean" else None
        task = task_loss(output, self.loss_name, batch.target, labels, self.pooling, weights)
        macs = model_macs(self.geometry, tokens_per_block(list(plan.tokens), self.layers, self.geometry))
        penalty = self.settings.flops_weight * ((macs - self.settings.target_macs) / self.original_macs) ** 2
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
            i, trace, protected, settings.proportional_attention, settings.merge_rule
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
def _progress(label: str, total: int):
    """A progress bar on rank 0 (loss, FLOPs vs target, elapsed, ETA); yields advance(status)."""
    if not distributed.is_main_process():
        yield lambda status: None
        return
    with progress_bar() as bar:
        task = bar.add_task(label, total=total, status="")
        yield lambda status: bar.update(task, advance=1, status=status)
