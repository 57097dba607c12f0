"""Token counts per block and the FLOPs they cost: the starts of the search and its read-out."""

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


# A schedule is fitted to this fraction of its FLOPs target, so reducers compared "at -50%" run at the same
# compute (GMACs within 0.5% of each other's target).
FIT_TOLERANCE = 0.005


def fit_to_macs(
    prune: list[int], merge: list[int], layers: list[int], geometry: Geometry, target_macs: int, protected: int
) -> list[int]:
    """`merge` (tokens after each searched layer) nudged one token at a time until the model's MACs are within
    FIT_TOLERANCE of `target_macs`. Layers take turns from the last (the smallest FLOPs step) to the first, so
    no single layer absorbs the correction; counts stay non-increasing, above the protected tokens and at most
    the layer's pruned count. Returns the closest reachable counts if the band cannot be reached."""
    merge = list(merge)

    def macs(counts: list[int]) -> int:
        return model_macs(geometry, tokens_per_block(counts, layers, geometry))

    turn = len(merge) - 1
    for _ in range(len(merge) * geometry.input_tokens):  # every count can move at most input_tokens times
        current = macs(merge)
        if abs(current - target_macs) <= FIT_TOLERANCE * target_macs:
            break
        step = -1 if current > target_macs else 1
        for offset in range(len(merge)):
            i = (turn - offset) % len(merge)
            upper = min(prune[i], merge[i - 1] if i else geometry.input_tokens)
            lower = max(protected + 1, merge[i + 1] if i + 1 < len(merge) else protected + 1)
            if lower <= merge[i] + step <= upper:
                merge[i] += step
                turn = i - 1
                break
        else:
            break  # no count can move further in this direction
    return merge


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


def shape_weights(layers: int, power: float) -> list[float]:
    """Share of the total reduction made by each of `layers` searched layers.

    Layer i's share is s_i - s_(i-1), with s_i = ((i + 1) / layers)^power.

    power 1 removes the same number of tokens in every layer (ToMe's constant r); above 1
    removes fewer early and more late (back-loaded), below 1 the reverse.
    """
    shares = [((i + 1) / layers) ** power for i in range(layers)]
    return [b - a for a, b in zip([0.0, *shares[:-1]], shares, strict=True)]


def shaped_start(
    geometry: Geometry,
    layers: list[int],
    protected: int,
    target_macs: int,
    merge_rule: str = "importance",
    power: float = 1.0,
) -> tuple[list[float], list[float]]:
    """Starting (prune, merge) counts: pure merging, shaped by `power`, at the target FLOPs.

    Searched layer i merges R x shape_weights(power)[i] tokens, R set by bisection so the
    FLOPs meet the target; power 1 is ToMe's constant-r schedule (continuous). Nothing is
    pruned at the start (prune count = tokens entering the layer). With the bipartite
    rule each layer merges at most what the rule can (as ToMe caps r); only when that
    cannot reach the target does the start prune. DiffRate itself starts from uniform
    logits (about half the tokens in every layer), which a few hundred steps at lr 0.01
    cannot move far enough; a start at the target lets the search spend its steps on the
    schedule's shape and on prune vs merge.
    """
    floor, total = float(protected + 1), float(geometry.input_tokens)
    # Bipartite merging keeps at least floor(P / 2) + c of P tokens (c = (protected + 1) // 2).
    c = (protected + 1) // 2
    weights = shape_weights(len(layers), power)

    def counts(reduction: float, capped: bool) -> list[float]:
        """Tokens after each searched layer; `capped`: no more merged than bipartite can merge."""
        out, previous = [], total
        for weight in weights:
            previous = max(floor, previous - reduction * weight, (previous - 1) / 2 + c if capped else floor)
            out.append(previous)
        return out

    def macs(reduction: float, capped: bool) -> float:
        return model_macs(geometry, tokens_per_block(counts(reduction, capped), layers, geometry))

    # Enough reduction for any layer to remove every token.
    low, high = 0.0, total / max(min(weights), 1e-9)
    # Bipartite: like ToMe, merge at most what the rule can; prune only when that cannot reach the target.
    capped = merge_rule == "bipartite" and macs(high, True) <= target_macs
    if not macs(high, capped) <= target_macs <= macs(low, capped):
        raise TokcompError(
            f"target {target_macs / 1e9:.3f} GMACs is outside what the searched blocks can reach "
            f"({macs(high, capped) / 1e9:.3f} to {macs(low, capped) / 1e9:.3f} GMACs)",
            hint="choose a target_flops between those, or search more blocks (targets / ignore)",
        )
    for _ in range(60):  # bisection: FLOPs fall as the reduction grows
        middle = (low + high) / 2
        low, high = (middle, high) if macs(middle, capped) > target_macs else (low, middle)
    merge = counts((low + high) / 2, capped)
    entering = [total, *merge[:-1]]
    if merge_rule == "bipartite" and not capped:
        # Merging alone cannot reach the target: the start prunes first where needed, P <= 2 (M - c) + 1.
        return [min(p, 2 * (m - c) + 1) for p, m in zip(entering, merge, strict=True)], merge
    return entering, merge
