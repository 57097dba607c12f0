"""ToMe's bipartite matching: the one implementation (ToMe, Token Transforming, DiffRate, the search).

1. alternating split of the tokens in their current order: A = 0, 2, 4, ..., B = 1, 3, 5, ...;
2. scores S = cosine similarity of A and B on the metric; a pair is allowed only when the A token may
   move (real, not protected) and the B token may receive (real, not protected), so real
   tokens never meet padding and protected tokens never change;
3. every A token takes its best B partner; the A tokens with the highest scores move.

Output order, as ToMe's: protected tokens first (in index order), then the A tokens that
stay (index order), then B (index order), then padding. With real tokens first in every
sample (the state's invariant) a sample of n real tokens always has (n - protected) // 2
movable A tokens, ToMe's cap.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.reducers.apply import first, inverse, merge, with_null
from tokcomp.reducers.ops import eager_cpu_path, positions
from tokcomp.reducers.ops import gather_tokens_reference as gather_rows  # metrics: not a swappable step
from tokcomp.reducers.rate import Count
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count

# What token similarity is computed on: the hidden states leaving the attention residual, or
# the attention keys averaged over heads (ToMe's default; the paper ablates both).
METRICS = ("hidden", "keys")
# Smallest norm a feature is divided by (F.normalize's eps): a zero feature scores 0 against all.
NORM_EPS = 1e-12


class Matching(NamedTuple):
    scores: Tensor  # [B, Na, Nb] A x B scores; pairs that are not allowed hold `forbidden`
    best: Tensor  # [B, Na] score of each A token's best partner (`forbidden` if it may not move)
    partner: Tensor  # [B, Na] index into B of that partner
    forbidden: float


def alternate(t: Tensor, start: int, index: Tensor | None = None) -> Tensor:
    """Tokens start, start + 2, ... of t [B, N, ...] (`index`: those indices, alternate_index, where
    the caller has them already). Read-only: on the eager CPU path it is a strided view.

    Traced, a strided view (t[:, 0::2]) would make torch.compile guard on the parity of N
    (through stride checks in matmul), which multiplies recompiles with every reducing block:
    there it is an index_select. Eager on CPU the view costs nothing, and matmul reads it
    in place (its rows are evenly strided).
    """
    if eager_cpu_path(t):
        return t[:, start::2]
    return t.index_select(1, alternate_index(t.shape[1], start, t.device) if index is None else index)


def alternate_index(tokens: int, start: int, device) -> Tensor:
    """The indices alternate() selects: start, start + 2, ... below tokens."""
    return torch.arange(start, tokens, 2, device=device)


def metric_features(x: Tensor, attn: AttentionInfo, metric: str) -> Tensor:
    """The [B, N, d] features similarity is measured on (`metric` in METRICS), not normalised."""
    return attn.key_metric() if metric == "keys" else x


def similarity_metric(x: Tensor, attn: AttentionInfo, metric: str) -> Tensor:
    """The L2-normalised [B, N, d] features similarity is measured on (`metric` in METRICS)."""
    return F.normalize(metric_features(x, attn, metric), dim=-1)


def bipartite_matching(features: Tensor, state: TokenState) -> Matching:
    """Cosine scores and best partners of the alternating split of features [B, N, d].

    The normalisation is applied to the [Na, Nb] dot products, not to the features: a
    division per score instead of a pass over the features (F.normalize's eps kept).
    """
    tokens = features.shape[1]
    # the A and B indices, made once for every alternate() below (eager CPU slices need none)
    a_index = b_index = None
    if not eager_cpu_path(features):
        a_index, b_index = (alternate_index(tokens, start, features.device) for start in (0, 1))
    dots = alternate(features, 0, a_index) @ alternate(features, 1, b_index).transpose(-1, -2)
    norms = torch.linalg.vector_norm(features, dim=-1).clamp_min(NORM_EPS)
    scores = dots / (alternate(norms, 0, a_index)[:, :, None] * alternate(norms, 1, b_index)[:, None, :])
    return matching_from_scores(scores, state, a_index, b_index)


def matching_from_scores(
    scores: Tensor, state: TokenState, a_index: Tensor | None = None, b_index: Tensor | None = None
) -> Matching:
    """Best partners of A x B scores [B, Na, Nb] (higher merges first); pairs that may not merge are
    forbidden. `a_index`, `b_index`: alternate_index's, where the caller has them."""
    free = state.free()
    allowed = alternate(free, 0, a_index)[:, :, None] & alternate(free, 1, b_index)[:, None, :]
    forbidden = torch.finfo(scores.dtype).min
    scores = torch.where(allowed, scores, forbidden)
    best, partner = scores.max(dim=-1)
    return Matching(scores, best, partner, forbidden)


class MergePlan(NamedTuple):
    kept: Tensor  # [B, K] tokens that become the output rows, in output order (null past a sample's end)
    src: Tensor  # [B, S] tokens that move (null for a slot that moves nothing)
    src_a: Tensor  # [B, S] the same slots as indices into A (valid in every slot)
    rows: Tensor  # [B, N + 1] output row of every token (and of null)
    moving: Tensor  # [B, S] bool: the slot moves a token


def plan_bipartite(matching: Matching, state: TokenState, removed: Count, slots: int, length: int) -> MergePlan:
    """Which tokens stay and which move, when each sample moves `removed` of its A tokens.

    `slots` (static) is the most any sample moves; `length` (static) is the output length.
    """
    batch, tokens = state.protected.shape
    null = tokens
    order = matching.best.argsort(dim=-1, descending=True, stable=True)
    moving = positions(slots, order) < (removed[:, None] if isinstance(removed, Tensor) else removed)
    moving = moving.expand(batch, slots)
    src_a = order[:, :slots]
    # Output key per token: protected first, then A that stays, then B; movers and padding last.
    stays_key, protected_key, gone_key = output_keys(tokens, state.protected)
    key = torch.where(state.protected, protected_key, stays_key)
    gone = torch.zeros_like(state.protected).scatter(1, 2 * src_a, moving)
    if state.real is not None:
        gone = gone | ~state.real
    key = torch.where(gone, gone_key, key)
    sorted_tokens = key.argsort(dim=-1)
    rows = inverse(sorted_tokens, tokens + 1)
    kept = first(sorted_tokens, real_count(state, tokens) - removed, length, null)
    src = torch.where(moving, 2 * src_a, null)
    return MergePlan(kept, src, src_a, rows, moving)


def output_keys(tokens: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort keys of plan_bipartite's output order [N], by token index: for a token that stays (A: its
    index, B: N + index), a protected token (index - 2N) and a token that leaves (index + 3N).
    Made once per length on the eager CPU path (like [B, N] decides), as `positions`."""
    if eager_cpu_path(like):
        return _cached_output_keys(tokens, like.device)
    return _output_keys(torch.arange(tokens, device=like.device))


def _output_keys(position: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    tokens = position.shape[0]
    return torch.where(position % 2 == 0, position, tokens + position), position - 2 * tokens, position + 3 * tokens


@functools.lru_cache(maxsize=64)
def _cached_output_keys(tokens: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    return _output_keys(torch.arange(tokens, device=device))


def merge_matched(
    x: Tensor,
    state: TokenState,
    matching: Matching,
    removed: Count,
    slots: int,
    length: int,
    preserve_norm: bool = False,
) -> tuple[Tensor, TokenState]:
    """ToMe's merge: each moving A token whole into its best B partner, size-weighted."""
    plan = plan_bipartite(matching, state, removed, slots, length)
    partner = 2 * matching.partner.gather(1, plan.src_a) + 1
    dst = torch.where(plan.moving, plan.rows.gather(1, partner), 0)
    return merge(x, state, plan.kept, plan.src, dst, null=state.real is not None, preserve_norm=preserve_norm)


def scores_to_kept(metric: Tensor, state: TokenState, kept: Tensor, moved: Tensor, null: bool) -> Tensor:
    """Similarity [B, S, K] of every moved token to every kept row; rows that may not receive
    (protected, padding, empty) hold the lowest float."""
    free = state.free()
    if null:
        metric, free = with_null(metric), with_null(free)
    scores = gather_rows(metric, moved) @ gather_rows(metric, kept).transpose(-1, -2)
    receives = free.gather(1, kept)[:, None, :]
    return torch.where(receives, scores, torch.full_like(scores, torch.finfo(scores.dtype).min))


def merge_into_most_similar(
    x: Tensor, state: TokenState, metric: Tensor, kept: Tensor, moved: Tensor, moving: Tensor, null: bool
) -> tuple[Tensor, TokenState]:
    """Each moving token (moved [B, S]) whole into its most similar kept row (DiffRate's merge)."""
    dst = scores_to_kept(metric, state, kept, moved, null).argmax(dim=-1)
    return merge(x, state, kept, moved, torch.where(moving, dst, torch.zeros_like(dst)), null=null)
