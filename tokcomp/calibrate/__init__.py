"""Learned compression rates: DiffRate's differentiable search (see docs/diffrate.md), and the
decoder prefill search of `learned_drop` (docs/learned_prefill.md).

rates.py          prune / merge logits -> soft masks and straight-through counts
soft_reducer.py   search-time reducer: tokens stay in place, masks enter attention
loss.py           distillation (KL / cosine) or cross-entropy
budget.py         token counts per block: shaped starts at the target FLOPs, the per-block read-out
start.py          the start: score schedule shapes on calibration batches, take the best
search.py         the training loop over calibration batches (AdamW, cosine lr, FLOPs penalty)
data.py           calibration batches: recipe data or a user forward_loop
distributed.py    torchrun: process group, data shards, rank-0-only writes
summary.py        the learned schedule as a table
prefill.py        decoder prefill: per-layer keep shares searched for a FLOPs target, scored by KL (learned_drop)
"""

from tokcomp.calibrate import distributed
from tokcomp.calibrate.data import calibration_batches
from tokcomp.calibrate.rates import RateParameters, RatePlan, candidate_counts
from tokcomp.calibrate.search import SearchResult, SearchSettings, search_rates
from tokcomp.calibrate.summary import print_schedule, schedule_table

__all__ = [
    "RateParameters",
    "RatePlan",
    "SearchResult",
    "SearchSettings",
    "calibration_batches",
    "candidate_counts",
    "distributed",
    "print_schedule",
    "schedule_table",
    "search_rates",
]
