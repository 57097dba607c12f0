"""Reference reductions that a method has to beat."""

from __future__ import annotations

import copy

from torch import nn

from tokcomp.passes.token_reduction import BlockSite
from tokcomp.reducers.random_drop import RandomDrop
from tokcomp.reducers.rate import Rate


def random_drop_like(original: nn.Module, input_tokens: int, tokens_per_layer: list[int], seed: int) -> nn.Module:
    """A copy of `original` that drops random tokens so every layer keeps the same count.

    The counts are those at the reference input; like every reducer, the copy removes the
    same share of any other input's tokens.
    """
    model = copy.deepcopy(original)
    site = BlockSite.prepare(model, "random_drop")
    reducers, before = [], input_tokens
    for after in tokens_per_layer:
        rate = Rate(before - after, max(before - site.protected, 1))
        reducers.append(RandomDrop(rate, site.protected, seed=seed) if after < before else None)
        before = after
    site.install(reducers, proportional_attention=False)
    return model
