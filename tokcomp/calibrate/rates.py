"""The learnable compression rates: per searched layer, a prune and a merge logit vector.

Candidates are kept counts of non-protected tokens c = (N, N-g, N-2g, ..., >= 1) at
granularity g. For one op with probabilities pi = softmax(logits):
- expected kept count K = ceil_STE(sum_k c_k pi_k) + protected;
- soft survival of sorted position j: p_j = sum of pi_k over candidates keeping j;
- hard mask 1 for j < K, else 0; mask = hard forward, gradient of p backward.
Counts never increase with depth: P_l = min(K_prune, n_{l-1}), M_l = min(K_merge, P_l),
and n_l = M_l is the token count after layer l. With the bipartite merge rule at most the
unprotected A tokens can merge, so M_l >= P_l - bipartite_sources(P_l): a floor that no
merge gradient can push through; where it binds, the FLOPs gradient reaches P_l through
it (fewer tokens then need more pruning). The FLOPs gradient of n_l reaches
both of layer l's ops (a straight-through min: both feel the budget) and nothing
else: each layer answers for its own marginal FLOPs, and the cap by n_{l-1} passes
no gradient back to earlier layers (their own FLOPs terms already price them).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from tokcomp.calibrate.ste import cap, ceil_ste, hard_with_soft_gradient, min_ste
from tokcomp.reducers.diffrate import COUNT_RULES

# Width of a chosen start distribution, as a fraction of the non-protected tokens.
START_WIDTH = 0.125


class RatePlan(NamedTuple):
    """One forward's rates, for L searched layers and N token positions (sorted order)."""

    prune_mask: Tensor  # [L, N] survival after pruning (hard forward, soft gradient)
    merge_mask: Tensor  # [L, N] survival after merging: sources are the tokens with prune 1, merge 0
    prune_count: Tensor  # [L] P_l (forward value only)
    tokens: Tensor  # [L] n_l = tokens after layer l (carries the FLOPs gradient)


def fixed_plan(prune: list[int], tokens: list[int], input_tokens: int) -> RatePlan:
    """The plan of known integer counts per searched layer (tokens kept by pruning, tokens after).

    The search forward under it is the compiled model's forward (tests/test_calibrate.py),
    so it scores a schedule on calibration data exactly, with no gradient.
    """
    positions = torch.arange(input_tokens)
    prune_count, after = torch.tensor(prune, dtype=torch.float32), torch.tensor(tokens, dtype=torch.float32)
    return RatePlan(
        (positions[None] < prune_count[:, None]).float(),
        (positions[None] < after[:, None]).float(),
        prune_count,
        after,
    )


def candidate_counts(input_tokens: int, protected: int, granularity: int) -> list[int]:
    """Kept non-protected token counts N, N-g, ... down to at least 1."""
    if granularity < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    free = input_tokens - protected
    return list(range(free, 0, -granularity))


def centred_logits(counts: Tensor, expected: float, width: float, steps: int = 60) -> Tensor:
    """Logits of a discretised Gaussian over the candidates whose mean count is `expected`.

    Adam moves every logit by about lr per step, which shifts the mean count by roughly
    lr x the spread of the distribution: a start of width `width` (in tokens) can move.
    The centre is found by bisection (candidates cut the Gaussian off at both ends).
    """
    low, high = float(counts.min()) - 4 * width, float(counts.max()) + 4 * width
    for _ in range(steps):
        centre = (low + high) / 2
        mean = (torch.softmax(-(((counts - centre) / width) ** 2) / 2, 0) * counts).sum().item()
        low, high = (centre, high) if mean < expected else (low, centre)
    return -(((counts - (low + high) / 2) / width) ** 2) / 2


class RateParameters(nn.Module):
    """Prune and merge logits for `layers` searched layers; its forward gives a RatePlan."""

    def __init__(
        self,
        layers: int,
        input_tokens: int,
        protected: int,
        granularity: int,
        initial: tuple[list[float], list[float]] | None = None,
        merge_rule: str = "importance",
    ):
        """`initial`: expected (prune, merge) kept counts per layer to start from; None = uniform logits."""
        super().__init__()
        if merge_rule not in COUNT_RULES:
            raise ValueError(f"unknown merge_rule {merge_rule!r} for a count search; valid: {', '.join(COUNT_RULES)}")
        self.merge_rule = merge_rule
        counts = torch.tensor(candidate_counts(input_tokens, protected, granularity), dtype=torch.float32)
        kept = counts + protected
        self.input_tokens = input_tokens
        self.protected = protected
        self.register_buffer("counts", counts, persistent=False)
        # survives[k, j] = 1 when candidate k keeps sorted position j
        self.register_buffer("survives", (kept[:, None] > torch.arange(input_tokens)[None]).float(), persistent=False)
        if initial is None:
            prune_start = merge_start = torch.zeros(layers, len(counts))
        else:
            width = START_WIDTH * float(counts.max())
            prune_start, merge_start = (
                torch.stack([centred_logits(counts, k - protected, width) for k in op]) for op in initial
            )
        self.prune_logits = nn.Parameter(prune_start.clone())
        self.merge_logits = nn.Parameter(merge_start.clone())

    def forward(self) -> RatePlan:
        prune_p, merge_p = self.prune_logits.softmax(-1), self.merge_logits.softmax(-1)
        prune_k = ceil_ste(prune_p @ self.counts) + self.protected
        merge_k = ceil_ste(merge_p @ self.counts) + self.protected
        prune_soft, merge_soft = prune_p @ self.survives, merge_p @ self.survives
        positions = torch.arange(self.input_tokens, device=prune_k.device)

        prune_masks, merge_masks, prune_counts, tokens = [], [], [], []
        previous = prune_k.new_tensor(float(self.input_tokens))
        for layer in range(prune_k.shape[0]):
            pruned = torch.minimum(prune_k[layer], previous).detach()
            after = cap(min_ste(prune_k[layer], merge_k[layer]), previous)
            if self.merge_rule == "bipartite":
                # Where the floor binds, the count moves only with P: the FLOPs gradient goes to pruning.
                prune_count = cap(prune_k[layer], previous)
                after = torch.maximum(after, prune_count - self._bipartite_sources(prune_count))
            prune_masks.append(hard_with_soft_gradient((positions < pruned).float(), prune_soft[layer]))
            merge_masks.append(hard_with_soft_gradient((positions < after.detach()).float(), merge_soft[layer]))
            prune_counts.append(pruned)
            tokens.append(after)
            previous = after
        return RatePlan(
            torch.stack(prune_masks), torch.stack(merge_masks), torch.stack(prune_counts), torch.stack(tokens)
        )

    def _bipartite_sources(self, tokens: Tensor) -> Tensor:
        """reducers.diffrate.bipartite_sources for a (float) token count: even positions >= protected.

        Straight-through floor: the count of sources grows by 1/2 per token, so the floor
        P - sources passes half of its gradient on to P.
        """
        half = (tokens + 1) / 2
        return torch.floor(half).detach() + (half - half.detach()) - (self.protected + 1) // 2

    @torch.no_grad()
    def read_out(self) -> tuple[list[int], list[int]]:
        """Integer (prune_kept, merge_kept) per searched layer: the counts the last forward used."""
        plan = self.forward()
        prune = [int(round(v)) for v in plan.prune_count.tolist()]
        merge = [int(round(v)) for v in plan.tokens.tolist()]
        return prune, merge
