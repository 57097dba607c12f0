"""Token counts per block and the FLOPs they cost: the start of the search and its read-out."""

from __future__ import annotations

from tokcomp.analysis.flops import model_macs
from tokcomp.errors import TokcompError
from tokcomp.surgery.adapters.base import Geometry


def tokens_per_block(counts: list, layers: list[int], geometry: Geometry) -> list:
    """Token count after every block: a searched layer's count (float or tensor), else the previous one."""
    out, current, searched = [], geometry.input_tokens, dict(zip(layers, counts, strict=True))
    for block in range(geometry.num_layers):
        current = searched.get(block, current)
        out.append(current)
    return out


def per_block_lists(
    prune: list[int], merge: list[int], layers: list[int], geometry: Geometry
) -> tuple[list[int], list[int]]:
    """Read-out of the searched layers -> prune_kept / merge_kept for every block (others keep all)."""
    prune_by, merge_by = dict(zip(layers, prune, strict=True)), dict(zip(layers, merge, strict=True))
    prune_kept, merge_kept, current = [], [], geometry.input_tokens
    for block in range(geometry.num_layers):
        prune_kept.append(prune_by.get(block, current))
        current = merge_by.get(block, current)
        merge_kept.append(current)
    return prune_kept, merge_kept


def linear_start(
    geometry: Geometry, layers: list[int], protected: int, target_macs: int
) -> tuple[list[float], list[float]]:
    """Starting (prune, merge) counts: every searched layer merges the same number r of tokens.

    r is set so the FLOPs meet the target (ToMe's constant-r schedule, continuous); nothing
    is pruned at the start (prune count = tokens entering the layer). DiffRate itself starts
    from uniform logits (about half the tokens in every layer), which a few hundred steps
    at lr 0.01 cannot move far enough; this start lets the search spend its steps on the
    shape of the schedule and on prune vs merge.
    """
    floor, total = float(protected + 1), float(geometry.input_tokens)

    def counts(r: float) -> list[float]:
        return [max(floor, total - r * (i + 1)) for i in range(len(layers))]

    def macs(r: float) -> float:
        return model_macs(geometry, tokens_per_block(counts(r), layers, geometry))

    low, high = 0.0, total
    if not macs(high) <= target_macs <= macs(low):
        raise TokcompError(
            f"target {target_macs / 1e9:.3f} GMACs is outside what the searched blocks can reach "
            f"({macs(high) / 1e9:.3f} to {macs(low) / 1e9:.3f} GMACs)",
            hint="choose a target_flops between those, or search more blocks (targets / ignore)",
        )
    for _ in range(60):  # bisection on r: FLOPs fall as r grows
        middle = (low + high) / 2
        low, high = (middle, high) if macs(middle) > target_macs else (low, middle)
    merge = counts((low + high) / 2)
    return [total, *merge[:-1]], merge
