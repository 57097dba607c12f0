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
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.diffrate import PADDING_IMPORTANCE
from tokcomp.reducers.transform import _forbid_pairs
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# Floor of the survival mask inside log(): e^-13.8 of a token's attention weight is left.
MASK_EPS = 1e-6
# Rank of tokens removed by an earlier layer: after every live token, before padding.
_REMOVED_IMPORTANCE = PADDING_IMPORTANCE / 2


@dataclass
class SearchTrace:
    """What one search forward carries beside the hidden tensor."""

    plan: RatePlan | None = None
    size: Tensor | None = None  # [B, N] true token sizes
    keep: Tensor | None = None  # [B, N] survival mask (hard forward, soft gradient)
    mask: Tensor | None = None  # [B, N] padding flags of the last searched block

    def begin(self, plan: RatePlan) -> None:
        self.plan, self.size, self.keep, self.mask = plan, None, None, None

    def pooling_weights(self) -> Tensor:
        """Per-token weight of a mean pooling over the final tokens: size x survival x real."""
        weight = self.size * self.keep
        return weight if self.mask is None else weight * self.mask


def token_rank(importance: Tensor, keep: Tensor, mask: Tensor | None, protected: int) -> Tensor:
    """Sorted position [B, N] of every token: protected first, then live tokens by importance."""
    rest = torch.where(
        keep[:, protected:] > 0, importance[:, protected:], torch.full_like(keep[:, protected:], _REMOVED_IMPORTANCE)
    )
    if mask is not None:
        rest = torch.where(mask[:, protected:] > 0, rest, torch.full_like(rest, PADDING_IMPORTANCE))
    order = rest.argsort(dim=-1, descending=True, stable=True)
    rank = order.argsort(dim=-1) + protected
    head = torch.arange(protected, device=rank.device).expand(rank.shape[0], -1)
    return torch.cat([head, rank], dim=1)


def nearest_destination(x: Tensor, is_destination: Tensor) -> Tensor:
    """Index [B, N] of each token's most cosine-similar destination other than itself."""
    metric = F.normalize(x.detach(), dim=-1)
    scores = metric @ metric.transpose(-1, -2)
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    allowed = is_destination[:, None, :] & ~eye
    return torch.where(allowed, scores, torch.full_like(scores, -torch.inf)).argmax(dim=-1)


def bipartite_merge_order(
    x: Tensor, rank: Tensor, pruned: int, protected: int, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(merge position [B, N], best B destination [B, N]) under the bipartite rule.

    Tokens at rank < `pruned` survive pruning and are split by rank parity: A = even,
    B = odd; ranks below `protected` never move or receive. Merge positions: every
    non-source first, then the A sources by best B score ascending (ties: higher rank
    first), then the pruned tokens by rank, so positions >= M are exactly the P - M best
    matched A tokens that ToMe's matching merges. Real and padding tokens never pair;
    padding pairs with padding first.
    """
    kept = rank < pruned
    unprotected = rank >= protected
    source = kept & unprotected & (rank % 2 == 0)
    receiver = kept & unprotected & (rank % 2 == 1)
    metric = F.normalize(x.detach(), dim=-1)
    scores = metric @ metric.transpose(-1, -2)
    scores = _forbid_pairs(scores, mask, mask)  # the inference rule's padding pairs
    scores = torch.where(receiver[:, None, :], scores, torch.full_like(scores, -torch.inf))
    best, destination = scores.max(dim=-1)
    # Sort key: non-sources (-3) < sources (their score, or finfo.min) < pruned tokens (3 + rank).
    key = torch.where(source, best, torch.full_like(best, -3.0))
    key = torch.where(kept, key, 3.0 + rank.to(best.dtype))
    by_rank = rank.argsort(dim=-1, descending=True)  # ties in key go to the higher rank first
    order = by_rank.gather(1, key.gather(1, by_rank).argsort(dim=-1, stable=True))
    return order.argsort(dim=-1), destination


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
        super().__init__(protected)
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
        size = trace.size if trace.size is not None else torch.ones_like(x[..., 0])
        keep = trace.keep if trace.keep is not None else torch.ones_like(x[..., 0])
        rank = token_rank(attn.cls_attention().detach(), keep.detach(), state.mask, self.protected)
        prune = trace.plan.prune_mask[self.layer, :tokens][rank]  # [B, N] per token
        if self.merge_rule == "bipartite":
            pruned = int(trace.plan.prune_count[self.layer])
            position, dst = bipartite_merge_order(x, rank, pruned, self.protected, state.mask)
            merge = trace.plan.merge_mask[self.layer, :tokens][position]
        else:
            merge = trace.plan.merge_mask[self.layer, :tokens][rank]
            destination = (rank >= self.protected) & (merge.detach() > 0) & (keep.detach() > 0)
            dst = nearest_destination(x, destination)

        # Merge sources: alive, kept by pruning, dropped by merging; padding carries no weight.
        real = state.mask if state.mask is not None else torch.ones_like(size)
        moved = keep * prune * (1 - merge) * size * real
        new_size = size + torch.zeros_like(size).scatter_add(1, dst, moved)
        received = torch.zeros_like(x).scatter_add(1, dst[..., None].expand_as(x), moved[..., None] * x)
        x = (x * size[..., None] + received) / new_size[..., None]

        keep = keep * prune * merge
        trace.size, trace.keep, trace.mask = new_size, keep, state.mask
        weight = new_size if self.proportional_attention else torch.ones_like(new_size)
        return x, state.with_(size=weight * (keep + MASK_EPS))

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.layer, "merge_rule": self.merge_rule}
