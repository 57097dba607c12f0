"""`cost: learned`: each reducing block's merge cost, fitted to costs measured on calibration data.

Measuring, one calibration sample at a time (unpadded, at most `max_tokens` tokens): the model
runs with greedy matching on *measured* costs. At each reducing block every candidate pair
(reducers/merge_cost.py: the allowed pairs in which a token is among the other's k most similar)
is merged alone, the rest of the blocks run without reduction, and the pair's cost is 1 - cosine
of that run's pooled output (the model's own pooling of the last block's tokens) to the
original's. The original's output is the same unreduced run from the first reducing block,
before its merge (no block before it reduces). The greedy choice on the measured costs sets the
tokens the next block sees, so the fit sees the states that good choices lead to.

Fitting, per block: least squares on the log measured cost *relative to its sample's mean*,
each sample weighted alike. Greedy matching only ever compares the pairs of one sample with
each other, so a sample's overall level (set by its length and its text) is not worth the fit's
capacity: on a validation split the relative fit scored at least as high as the absolute one in
every length bucket, over four fit seeds (both with the pair MLP, `hidden: 8`). AdamW runs
`steps` steps on whole samples drawn at random, about `batch_pairs` pairs a step: the linear
terms at lr 1e-2 with an L2 penalty of 0.1 on the per-token weight, a pair MLP (`hidden` > 0;
none by default) at 3e-3 with weight decay 0.01 (rates chosen on calibration text when the cost
was designed; results: benchmarks/results/merge_cost_model.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokcomp.data import load_samples, make_batches
from tokcomp.errors import RecipeError
from tokcomp.pooling import pool
from tokcomp.progress import info, progress_bar
from tokcomp.reducers.greedy_matching import merge_greedy
from tokcomp.reducers.merge_cost import (
    NON_CANDIDATE_OFFSET,
    LearnedMergeCost,
    allowed_pairs,
    candidate_mask,
    candidate_partners,
    symmetric_similarity,
)
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.block import TokenBlock
from tokcomp.surgery.state import TokenState

LINEAR_LR = 1e-2
LINEAR_L2 = 0.1  # on the per-token weight w
PAIR_LR = 3e-3
PAIR_WEIGHT_DECAY = 0.01
PAIRS_PER_RUN = 256  # candidate pairs measured in one batched run of the remaining blocks


@dataclass
class PairCosts:
    """The measured pairs of one block in one sample."""

    block: int
    first: Tensor  # [P, d] hidden states of the pairs' tokens
    second: Tensor  # [P, d]
    cos_hidden: Tensor  # [P]
    cos_keys: Tensor  # [P]
    size_first: Tensor  # [P]
    size_second: Tensor  # [P]
    cost: Tensor  # [P] measured: 1 - cosine of the pooled output to the original's


PAIR_FIELDS = ("first", "second", "cos_hidden", "cos_keys", "size_first", "size_second", "cost")


@dataclass
class Measurement:
    """What one sample's run shares between its blocks."""

    pooling: str
    preserve_norm: bool
    reference: Tensor | None = None  # the original's pooled output, set by the first reducing block
    records: list[PairCosts] = field(default_factory=list)


def unreduced_rest(blocks: list[TokenBlock], index: int, x: Tensor, state: TokenState, pooling: str) -> Tensor:
    """Pooled output [B, d] of blocks[index:] without further reduction; x has passed block index's attention."""
    x = blocks[index].mlp_residual(x)
    for block in blocks[index + 1 :]:
        x, _ = block.attention_residual(x, state.attention_bias(block.proportional_attention, x.dtype))
        x = block.mlp_residual(x)
    return pool(x, state.weight(), pooling)


def pooled_after_merging(
    blocks: list[TokenBlock], index: int, x: Tensor, state: TokenState, first: Tensor, second: Tensor, m: Measurement
) -> Tensor:
    """[P, d] pooled outputs when only pair p (first[p] into second[p]) merges, at block `index`, with the
    reducer's own merge (reducers/greedy_matching.py)."""
    pairs, tokens = len(first), x.shape[1]
    scores = torch.full((pairs, tokens, tokens), -1.0, dtype=x.dtype, device=x.device)
    scores[torch.arange(pairs), first, second] = 1.0
    states = TokenState(*(None if f is None else f.expand(pairs, *f.shape[1:]) for f in state))
    merged, merged_state = merge_greedy(x.expand(pairs, -1, -1), states, scores, 1, 1, tokens - 1, m.preserve_norm)
    return unreduced_rest(blocks, index, merged, merged_state, m.pooling)


class MeasuredMergeCost(nn.Module):
    """Stands in for a block's learned cost while measuring: greedy scores from the measured costs of
    the candidate pairs, which it records."""

    def __init__(self, blocks: list[TokenBlock], index: int, candidates: int, measurement: Measurement):
        super().__init__()
        self.blocks, self.index, self.candidates, self.measurement = blocks, index, candidates, measurement

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> Tensor:
        m, tokens = self.measurement, x.shape[1]
        similarity = symmetric_similarity(F.normalize(x, dim=-1))
        scores = similarity - NON_CANDIDATE_OFFSET
        if m.reference is None:
            m.reference = unreduced_rest(self.blocks, self.index, x, state, m.pooling)
        removed = self.blocks[self.index].reducer.per_sample_removal(state, tokens)
        if int(torch.as_tensor(removed).max()) == 0:
            return scores
        allowed = allowed_pairs(state)
        partners = candidate_partners(similarity, allowed, self.candidates)
        first, second = torch.triu(candidate_mask(partners, allowed)[0], diagonal=1).nonzero(as_tuple=True)
        pooled = torch.cat(
            [
                pooled_after_merging(
                    self.blocks, self.index, x, state, first[s : s + PAIRS_PER_RUN], second[s : s + PAIRS_PER_RUN], m
                )
                for s in range(0, len(first), PAIRS_PER_RUN)
            ]
        )
        cost = 1 - F.cosine_similarity(pooled, m.reference.expand_as(pooled), dim=-1)
        keys = F.normalize(attn.key_metric(), dim=-1)[0]  # compared per pair, as candidate_cosine does
        m.records.append(
            PairCosts(
                self.index,
                x[0, first].float(),
                x[0, second].float(),
                similarity[0, first, second].float(),
                (keys[first] * keys[second]).sum(dim=-1).float(),
                state.size[0, first].float(),
                state.size[0, second].float(),
                cost.float(),
            )
        )
        scores = scores.clone()
        scores[0, first, second] = scores[0, second, first] = -cost.to(scores.dtype)
        return scores


@dataclass
class CalibrationText:
    inputs: list[dict[str, Tensor]]  # one unpadded sample each
    data: str
    drawn: int  # samples drawn from the data
    skipped: int  # longer than max_tokens


def calibration_inputs(ctx, settings, reference_tokens: int, pass_name: str) -> CalibrationText:
    """The recipe's calibration samples, one input each, those of at most `max_tokens` tokens (images have
    the reference input's `reference_tokens`)."""
    from tokcomp.data.sources import default_data
    from tokcomp.recipe import CalibrationSpec

    spec = ctx.calibration or CalibrationSpec()
    modality = ctx.input_spec.modality
    if ctx.loaded is None or ctx.loaded.processor is None:
        raise RecipeError(
            f"{pass_name} cost: learned measures merge costs on calibration data with the model's preprocessing",
            hint="run it from a recipe (tokcomp compile), or use cost: similarity",
        )
    if spec.forward_loop is not None:
        raise RecipeError(
            f"{pass_name} cost: learned runs calibration samples one at a time, which a forward_loop cannot do",
            hint="give calibration data (calibration: {data: ...}) instead of a forward_loop",
        )
    data = spec.data or default_data(modality)
    samples = load_samples(data, modality, spec.samples, ctx.seed)
    inputs, skipped = [], 0
    for batch in make_batches(samples, ctx.loaded.processor, modality, 1, ctx.input_spec.sequence_length):
        tokens = batch["input_ids"].shape[1] if "input_ids" in batch else reference_tokens
        if tokens > settings.max_tokens:
            skipped += 1
        else:
            inputs.append(batch)
    if not inputs:
        raise RecipeError(
            f"{pass_name} cost: learned found no calibration sample of at most {settings.max_tokens} tokens "
            f"among {len(samples)} of {data}",
            hint="raise cost_model.max_tokens (measuring grows with the cube of the length) or give shorter samples",
        )
    return CalibrationText(inputs, data, len(samples), skipped)


def measure_costs(model: nn.Module, blocks: list[TokenBlock], text: CalibrationText, settings, pooling: str,
                  preserve_norm: bool, pass_name: str) -> list[PairCosts]:  # fmt: skip
    """Measured pair costs at every reducing block of every sample, along greedy measured-cost choices."""
    measurement = Measurement(pooling, preserve_norm)
    reducing = [index for index, block in enumerate(blocks) if block.reducer is not None]
    saved = {index: blocks[index].reducer.cost for index in reducing}
    for index in reducing:
        blocks[index].reducer.cost = MeasuredMergeCost(blocks, index, settings.candidates, measurement)
    try:
        with torch.inference_mode(), progress_bar() as bar:
            task = bar.add_task(f"{pass_name}: measuring merge costs", total=len(text.inputs))
            for inputs in text.inputs:
                measurement.reference = None
                model(**inputs)
                bar.advance(task)
    finally:
        for index in reducing:
            blocks[index].reducer.cost = saved[index]
    return measurement.records


def fit_block(records: list[PairCosts], width: int, settings, seed: int) -> tuple[LearnedMergeCost, float]:
    """One block's cost model fitted to its records (one per sample); (model, mean over samples of the squared
    error of the log cost relative to the sample's mean)."""
    # callers may hold inference mode (tokcomp.apply inside torch.inference_mode()): fitting needs autograd
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(records, width, settings, seed)


def within_sample_error(predicted: Tensor, target: Tensor, sample: Tensor, samples: int) -> Tensor:
    """[samples] mean squared error per sample once each sample's mean residual is removed: how far the
    prediction is from ranking and spacing the sample's pairs as measured (sample [P]: each pair's sample)."""
    counts = torch.zeros(samples).index_add_(0, sample, torch.ones_like(target))
    residual = predicted - target
    offset = torch.zeros(samples).index_add_(0, sample, residual) / counts
    return torch.zeros(samples).index_add_(0, sample, (residual - offset[sample]).pow(2)) / counts


def _fit(records: list[PairCosts], width: int, settings, seed: int) -> tuple[LearnedMergeCost, float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LearnedMergeCost(width, settings.hidden, settings.candidates)
    # clone(): the records were made under inference mode, whose tensors autograd cannot save
    *features, cost = [torch.cat([getattr(r, name) for r in records]).clone() for name in PAIR_FIELDS]
    target = cost.clamp_min(1e-7).log()
    counts = torch.tensor([len(r.cost) for r in records])
    starts = counts.cumsum(0) - counts
    per_step = max(1, round(settings.batch_pairs * len(records) / len(target)))  # samples of ~batch_pairs pairs
    groups = [{"params": [model.weight, model.coefficients], "lr": LINEAR_LR, "weight_decay": 0.0}]
    if model.pair is not None:
        groups.append({"params": model.pair.parameters(), "lr": PAIR_LR, "weight_decay": PAIR_WEIGHT_DECAY})
    optimizer = torch.optim.AdamW(groups)
    for _ in range(settings.steps):
        chosen = torch.randint(len(records), (per_step,), generator=generator)
        # every pair of the chosen samples: `sample` numbers them 0..per_step-1, `within` counts each one's pairs
        sample = torch.repeat_interleave(torch.arange(per_step), counts[chosen])
        within = torch.arange(len(sample)) - (counts[chosen].cumsum(0) - counts[chosen])[sample]
        index = starts[chosen][sample] + within
        optimizer.zero_grad()
        predicted = model.log_cost(*(f[index] for f in features))
        loss = within_sample_error(predicted, target[index], sample, per_step).mean()
        (loss + LINEAR_L2 * model.weight.pow(2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        sample = torch.repeat_interleave(torch.arange(len(records)), counts)
        error = within_sample_error(model.log_cost(*features), target, sample, len(records)).mean()
    return model.requires_grad_(False), error.item()


def _fit_reported(records: list[PairCosts], index: int, block: TokenBlock, settings, seed: int, pass_name: str):
    """(block `index`'s fitted cost model in the block's dtype, its line of the report)."""
    mine = [r for r in records if r.block == index]
    if not mine:
        raise RecipeError(
            f"{pass_name} cost: learned measured no merge at block {index}: the calibration samples are too short "
            "for it to remove a token",
            hint="give longer calibration samples or raise cost_model.max_tokens",
        )
    fitted, error = fit_block(mine, block.hidden_size, settings, seed + index)
    report = {"samples": len(mine), "pairs": sum(len(r.cost) for r in mine), "relative_log_cost_mse": round(error, 4)}
    return fitted.to(next(block.parameters()).dtype), report


def learn_merge_costs(
    model: nn.Module,
    blocks: list[TokenBlock],
    settings,
    preserve_norm: bool,
    reference_tokens: int,
    ctx,
    pass_name: str,
) -> tuple[dict[int, LearnedMergeCost], dict[str, Any]]:
    """{block index: fitted cost model} for every reducing block, and the calibration's report."""
    pooling = "mean" if ctx.loaded is None else ctx.loaded.pooling
    if pooling not in ("mean", "cls"):
        raise RecipeError(
            f"{pass_name} cost: learned measures costs on the model's pooled embedding, and this model has none",
            hint="use cost: similarity",
        )
    text = calibration_inputs(ctx, settings, reference_tokens, pass_name)
    started = time.perf_counter()
    records = measure_costs(model, blocks, text, settings, pooling, preserve_norm, pass_name)
    measured = time.perf_counter() - started
    reducing = [index for index, block in enumerate(blocks) if block.reducer is not None]
    models, fits = {}, {}
    with progress_bar() as bar:
        task = bar.add_task(f"{pass_name}: fitting merge costs", total=len(reducing))
        for index in reducing:
            models[index], fits[str(index)] = _fit_reported(
                records, index, blocks[index], settings, ctx.seed, pass_name
            )
            bar.advance(task)
    seconds = time.perf_counter() - started
    info(
        f"{pass_name}: merge costs measured on the {pooling}-pooled output of {len(text.inputs)} samples of "
        f"{text.data} ({measured:.0f} s), fitted for {len(models)} blocks ({seconds - measured:.0f} s)"
    )
    report = {
        "calibration": {
            "pooling": pooling,
            "data": text.data,
            "drawn": text.drawn,
            "used": len(text.inputs),
            "skipped_longer_than_max_tokens": text.skipped,
        },
        "blocks": fits,
        "measure_seconds": round(measured, 1),
        "fit_seconds": round(seconds - measured, 1),
    }
    return models, report
