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
    geometry: Geometry, layers: list[int], protected: int, target_macs: int, merge_rule: str = "importance"
) -> tuple[list[float], list[float]]:
    """Starting (prune, merge) counts: every searched layer merges the same number r of tokens.

    r is set so the FLOPs meet the target (ToMe's constant-r schedule, continuous); nothing
    is pruned at the start (prune count = tokens entering the layer). With the bipartite
    rule r is capped per layer by what it can merge (as ToMe caps r); only when that cannot
    reach the target does the start prune. DiffRate itself starts
    from uniform logits (about half the tokens in every layer), which a few hundred steps
    at lr 0.01 cannot move far enough; this start lets the search spend its steps on the
    shape of the schedule and on prune vs merge.
    """
    floor, total = float(protected + 1), float(geometry.input_tokens)
    # Bipartite merging keeps at least floor(P / 2) + c of P tokens (c = (protected + 1) // 2).
    c = (protected + 1) // 2

    def counts(r: float, capped: bool) -> list[float]:
        """Tokens after each searched layer merging r each; `capped`: no more than bipartite can merge."""
        out, previous = [], total
        for _ in layers:
            previous = max(floor, previous - r, (previous - 1) / 2 + c if capped else floor)
            out.append(previous)
        return out

    def macs(r: float, capped: bool) -> float:
        return model_macs(geometry, tokens_per_block(counts(r, capped), layers, geometry))

    # Bipartite: like ToMe, merge at most what the rule can; prune only when that cannot reach the target.
    capped = merge_rule == "bipartite" and macs(total, True) <= target_macs
    low, high = 0.0, total
    if not macs(high, capped) <= target_macs <= macs(low, capped):
        raise TokcompError(
            f"target {target_macs / 1e9:.3f} GMACs is outside what the searched blocks can reach "
            f"({macs(high, capped) / 1e9:.3f} to {macs(low, capped) / 1e9:.3f} GMACs)",
            hint="choose a target_flops between those, or search more blocks (targets / ignore)",
        )
    for _ in range(60):  # bisection on r: FLOPs fall as r grows
        middle = (low + high) / 2
        low, high = (middle, high) if macs(middle, capped) > target_macs else (low, middle)
    merge = counts((low + high) / 2, capped)
    entering = [total, *merge[:-1]]
    if merge_rule == "bipartite" and not capped:
        # Merging alone cannot reach the target: the start prunes first where needed, P <= 2 (M - c) + 1.
        return [min(p, 2 * (m - c) + 1) for p, m in zip(entering, merge, strict=True)], merge
    return entering, merge
