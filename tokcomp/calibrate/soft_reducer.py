"""The search-time DiffRate reducer: tokens stay in place, masks and sizes change.

During the search every searched block keeps all N tokens. Pruned and merged-away
tokens get survival mask 0 (hard forward, soft gradient, calibrate/rates.py) and
are removed from later attention through the additive key bias: the block's size
channel carries an attention weight a_j (keep_j + eps), a_j = size_j with
proportional attention, else 1, and the block (forced to proportional attention
for the search) adds log of it to the key logits. softmax(l + log(k + eps)) is
attention re-weighted by the mask k: the same as DiffRate's masked, re-normalised
attention, and eps keeps the gradient with respect to k finite where k = 0.

The true sizes and the survival mask travel beside the hidden tensor in a
`SearchTrace` (search time only, never exported), reset before every forward.
Merging mirrors the inference reducer: each source's size-weighted value is added
to its most similar destination, and the source stays in place, masked. Which tokens
are sources is read from a merge order over sorted positions (the survival mask keeps
positions < M): with the `importance` rule it is the importance rank itself; with the
`bipartite` rule, the positions left after pruning split into A (even) and B (odd), and
the A tokens are ordered by their best B score, most similar last, as ToMe merges them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.calibrate.rates import RatePlan
from tokcomp.errors import TokcompError
from tokcomp.reducers.apply import inverse
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.matching import bipartite_matching
from tokcomp.reducers.ranking import importance_order
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# Floor of the survival mask inside log(): e^-13.8 of a token's attention weight is left.
MASK_EPS = 1e-6
# Importance of tokens removed by an earlier layer: below every attention probability.
_REMOVED_IMPORTANCE = -0.5


@dataclass
class SearchTrace:
    """What one search forward carries beside the hidden tensor."""

    plan: RatePlan | None = None
    size: Tensor | None = None  # [B, N] true token sizes
    keep: Tensor | None = None  # [B, N] survival mask (hard forward, soft gradient)
    real: Tensor | None = None  # [B, N] padding flags of the last searched block

    def begin(self, plan: RatePlan) -> None:
        self.plan, self.size, self.keep, self.real = plan, None, None, None

    def pooling_weights(self) -> Tensor:
        """Per-token weight of a mean pooling over the final tokens: size x survival x real."""
        weight = self.size * self.keep
        return weight if self.real is None else weight * self.real


def token_rank(importance: Tensor, keep: Tensor, state: TokenState) -> Tensor:
    """Sorted position [B, N] of every token: protected first, live tokens by importance, removed, padding."""
    live = torch.where(keep > 0, importance, torch.full_like(importance, _REMOVED_IMPORTANCE))
    return inverse(importance_order(live, state))


def reference_position(position: Tensor, state: TokenState, protected: int, tokens: int) -> Tensor:
    """Where a sorted position of each sample falls at the reference input [B, N].

    The plan's counts refer to the reference input (every token real). A sample with n
    reducible tokens keeps the same share of them as the reference keeps of its
    N - protected, the share its rates give it in the compiled model (up to rounding).
    """
    if state.real is None:
        return position
    reducible = state.free().sum(dim=-1, keepdim=True).clamp_min(1)
    scaled = protected + torch.div((position - protected) * (tokens - protected), reducible, rounding_mode="floor")
    return torch.where(position < protected, position, scaled).clamp(max=tokens - 1)


def bipartite_merge_order(
    x: Tensor, rank: Tensor, pruned: Tensor, alive: Tensor, state: TokenState
) -> tuple[Tensor, Tensor]:
    """(merge position [B, N], destination token [B, N]) under the bipartite rule.

    The tokens kept by pruning (rank < pruned) are matched as the compiled reducer matches
    them (reducers/matching.py, over the importance order). Merge positions: every
    non-source first, then the A sources by best score ascending (ties: higher rank
    first), then the pruned tokens by rank, so positions >= M are exactly the P - M best
    matched A tokens that the compiled model merges.
    """
    order = rank.argsort(dim=-1)  # tokens in sorted order
    sorted_real = ((rank < pruned[:, None]) & alive).gather(1, order)
    if state.real is not None:
        sorted_real = sorted_real & state.real.gather(1, order)
    sorted_state = TokenState(
        size=state.size, real=sorted_real, protected=state.protected.gather(1, order), position=order
    )
    features = x.detach().gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
    matching = bipartite_matching(features, sorted_state)
    # Back to tokens: A = even sorted positions (sources), B = odd (destinations).
    best = torch.full_like(rank, -3, dtype=x.dtype)
    best = best.scatter(1, order[:, 0::2], matching.best.to(x.dtype))
    destination = order[:, 1::2].gather(1, matching.partner)
    destination = torch.zeros_like(rank).scatter(1, order[:, 0::2], destination)
    movable = (best > matching.forbidden) & (rank % 2 == 0)
    # Sort key: non-sources (-3) < sources (their score) < pruned tokens (3 + rank).
    key = torch.where(movable, best, torch.full_like(best, -3.0))
    key = torch.where(rank < pruned[:, None], key, 3.0 + rank.to(best.dtype))
    by_rank = rank.argsort(dim=-1, descending=True)  # ties in key go to the higher rank first
    merge_order = by_rank.gather(1, key.gather(1, by_rank).argsort(dim=-1, stable=True))
    return inverse(merge_order), destination


def nearest_destination(x: Tensor, is_destination: Tensor) -> Tensor:
    """Index [B, N] of each token's most cosine-similar destination other than itself."""
    metric = F.normalize(x.detach(), dim=-1)
    scores = metric @ metric.transpose(-1, -2)
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    allowed = is_destination[:, None, :] & ~eye
    return torch.where(allowed, scores, torch.full_like(scores, -torch.inf)).argmax(dim=-1)


class SoftDiffRate(Reducer):
    """Search-time stand-in for reducers.diffrate.DiffRate at searched layer `layer`."""

    kind = "diffrate_search"

    def __init__(
        self,
        layer: int,
        trace: SearchTrace,
        protected: int,
        proportional_attention: bool,
        merge_rule: str = "importance",
    ):
        super().__init__(Rate(0, 1), protected)
        self.layer = layer
        self.trace = trace
        self.proportional_attention = proportional_attention
        self.merge_rule = merge_rule

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in  # tokens stay in the tensor during the search

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        trace, tokens = self.trace, x.shape[1]
        if tokens != trace.plan.prune_mask.shape[1]:
            raise TokcompError(
                f"calibration inputs have {tokens} tokens but the token counts refer to "
                f"{trace.plan.prune_mask.shape[1]} (the reference input)",
                hint="make the preprocessing produce the reference input size (model.image_size / sequence_length)",
            )
        size = trace.size if trace.size is not None else torch.ones_like(state.size)
        keep = trace.keep if trace.keep is not None else torch.ones_like(state.size)
        real = state.real.to(size.dtype) if state.real is not None else torch.ones_like(size)
        rank = token_rank(attn.cls_attention().detach(), keep.detach(), state)
        at_reference = reference_position(rank, state, self.protected, tokens)
        prune = trace.plan.prune_mask[self.layer, :tokens][at_reference] * real  # [B, N] per token
        if self.merge_rule == "bipartite":
            pruned = (prune.detach() > 0).sum(dim=-1)
            position, dst = bipartite_merge_order(x, rank, pruned, keep.detach() > 0, state)
            merge = trace.plan.merge_mask[self.layer, :tokens][reference_position(position, state, self.protected, tokens)]
        else:
            merge = trace.plan.merge_mask[self.layer, :tokens][at_reference]
            destination = (rank >= self.protected) & (merge.detach() > 0) & (keep.detach() > 0) & (real > 0)
            dst = nearest_destination(x, destination)

        # Merge sources: alive, kept by pruning, dropped by merging; padding carries no weight.
        moved = keep * prune * (1 - merge) * size * real
        new_size = size + torch.zeros_like(size).scatter_add(1, dst, moved)
        received = torch.zeros_like(x).scatter_add(1, dst[..., None].expand_as(x), moved[..., None].to(x.dtype) * x)
        x = (x * size[..., None].to(x.dtype) + received) / new_size[..., None].to(x.dtype)

        keep = keep * prune * merge
        trace.size, trace.keep, trace.real = new_size, keep, real
        weight = new_size if self.proportional_attention else torch.ones_like(new_size)
        return x, state._replace(size=weight * (keep + MASK_EPS))

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.layer, "merge_rule": self.merge_rule}
