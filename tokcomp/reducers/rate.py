"""Budgets as rates: a layer removes a share of each sample's own tokens.

A budget is resolved at the reference input (224 px, 128 tokens, ...): layer l removes
r_l of the n_l reducible tokens (real, not protected) that enter it there. It is stored
and applied as the rate r_l / n_l of whatever enters the layer:

    removed(n) = round(r_l * n / n_l)          (halves round up; exact integer arithmetic)

so removed(n_l) = r_l exactly (published schedules and reference numbers reproduce), a
160-px image or a 20-token sentence loses the same share, and every sample of a padded
batch is reduced by its own length. The same function sizes the tensor: a batch is
as long as its longest sample needs (`Reducer.kept_tokens`), which is a function of the
tensor's shape alone, so shapes stay static for export and torch.compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

Count = int | Tensor  # a Python int (every sample alike) or a [B] int64 tensor (one per sample)


class Rate(NamedTuple):
    removed: int  # tokens removed at the reference input
    reducible: int  # reducible tokens entering the layer at the reference input

    def of(self, reducible: Count) -> Count:
        """Tokens to remove from `reducible` tokens: round(removed * reducible / self.reducible)."""
        if self.removed == 0:
            return reducible * 0
        return (2 * self.removed * reducible + self.reducible) // (2 * self.reducible)

    def to_json(self) -> list[int]:
        return [self.removed, self.reducible]


def at_most(count: Count, limit: Count) -> Count:
    """min(count, limit) for ints and per-sample tensors alike."""
    if isinstance(count, Tensor):
        return torch.minimum(count, limit) if isinstance(limit, Tensor) else count.clamp(max=limit)
    return limit.clamp(max=count) if isinstance(limit, Tensor) else min(count, limit)


def rates_from_removals(
    removals: list[int], input_tokens: int, protected: int, limit: Callable[[int], int]
) -> list[Rate]:
    """Rates of a schedule given as tokens removed per layer at the reference input.

    `limit(reducible)` is the most a layer may remove (e.g. half, for bipartite merging);
    a removal above it is capped there, as the reducer would cap it.
    """
    rates, tokens = [], input_tokens
    for removed in removals:
        reducible = tokens - protected
        removed = max(0, min(removed, limit(reducible)))
        rates.append(Rate(removed, max(reducible, 1)))
        tokens -= removed
    return rates


def tokens_after_removals(
    removals: list[int], input_tokens: int, protected: int, limit: Callable[[int], int]
) -> list[int]:
    """Tokens after every layer at the reference input, for a schedule of tokens removed per layer."""
    counts, tokens = [], input_tokens
    for rate in rates_from_removals(removals, input_tokens, protected, limit):
        tokens -= rate.removed
        counts.append(tokens)
    return counts
