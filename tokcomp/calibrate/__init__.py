"""Learned compression rates: DiffRate's differentiable search (see docs/diffrate.md), and the
discrete share search behind `learned_drop` (docs/learned_prefill.md) and `rates: learned` on
speech encoders (docs/speech_surgery.md).

rates.py          prune / merge logits -> soft masks and straight-through counts
soft_reducer.py   search-time reducer: tokens stay in place, masks enter attention
loss.py           distillation (KL / cosine) or cross-entropy
budget.py         token counts per block: shaped starts at the target FLOPs, the per-block read-out
start.py          the start: score schedule shapes on calibration batches, take the best
search.py         the training loop over calibration batches (AdamW, cosine lr, FLOPs penalty)
data.py           calibration batches: recipe data or a user forward_loop
distributed.py    torchrun: process group, data shards, rank-0-only writes
summary.py        the learned schedule as a table
share_search.py   discrete search over per-layer kept shares at a FLOPs target, scored by a black-box loss
prefill.py        decoder prefill: calibration prompts and the continuation KL score (learned_drop)
learned_rates.py  `rates: learned` on merging passes: per-block counts from the share search
speech.py         calibration clips and the transcript KL score (Whisper)
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
