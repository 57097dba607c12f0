"""Token Transforming (Zeng et al., 2025): many-to-many token merging, X' = T X.

Re-implemented from the description in shared/reference/methods.md (no code exists):
1. choose the N' = N - r output tokens ("targets"): ToMe's alternating split
   (`alternating`: the r best matched A tokens move into B, the rest stay), or the
   tokens the CLS token attends to most (`cls_attention`);
2. score every moved token against the targets: cosine similarity of the hidden
   states (or of the attention keys, ToMe's metric), forbidden pairs masked (protected
   tokens never receive, padding and real tokens never mix);
3. keep each moved token's top-k targets and soft-assign it over them with
   softmax(score / temperature): its mass is split, it is not moved whole;
4. aggregate size-weighted: x'_j = sum_i T_ji w_i x_i / sum_i T_ji w_i with w = size
   (x mask), and carry sizes through the same T: s'_j = sum_i T_ji w_i.

T = [S_kept; 0] + A^T S_moved, where S_* are one-hot row selections and A [M, N'] holds
each moved token's shares (rows sum to 1). Every column of T sums to 1, so token mass
is conserved and a size-weighted mean over tokens is unchanged by the reduction.
Special cases: k = 1 (or temperature -> 0) is exclusive merging (ToMe with
`alternating`); A = 0 is pruning; one extra output row fed by every dropped token is
EViT. `transform_tokens` applies T with gathers and one batched matmul: no scatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.errors import TokcompError
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ops import gather_tokens, index_merge_sum, weighted_merge
from tokcomp.reducers.prune import capped_r, split_by_importance
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

TARGET_SELECTIONS = ("alternating", "cls_attention")
METRICS = ("hidden", "keys")
# Defaults chosen on tuning data (CIFAR images, MiniLM tuning sentences; benchmarks/reducer_table.py
# --sweep), never on the benchmark's evaluation data. See docs/reducers.md. k = 1 (each token moved
# whole) has the best mean tuning fidelity and is exactly reproducible in export; k >= 2 at a low
# temperature amplifies fp32 rounding (d share / d score up to 1 / (4 temperature)) past the 1e-4
# ONNX tolerance on some inputs, so many-to-many is opt-in.
DEFAULT_K = 1
DEFAULT_TEMPERATURE = 0.01
DEFAULT_SELECTION = "alternating"
DEFAULT_METRIC = "hidden"
# Score for padding-padding pairs: above any cosine similarity, so padding goes to padding.
_PAD_PAIR_SCORE = 2.0


# ------------------------------------------------------------------ applying T


def transform_sum(t: Tensor, kept: Tensor, moved: Tensor, assignment: Tensor) -> Tensor:
    """T t for T = [S_kept; 0] + assignment^T S_moved: the one op a custom kernel replaces.

    t [B, N, D]; kept [B, K]: tokens that keep their own row (the first K output rows);
    moved [B, M]: tokens spread over the output rows; assignment [B, M, N'] (N' >= K):
    the share of each moved token that goes to each output row. Rows K.. start empty
    (EViT's fused token). Returns [B, N', D].
    """
    own = gather_tokens(t, kept)
    extra = assignment.shape[-1] - kept.shape[1]
    if extra:
        own = torch.cat([own, own.new_zeros(own.shape[0], extra, own.shape[2])], dim=1)
    # own + assignment^T @ moved in one fused batched matmul
    return torch.baddbmm(own, assignment.transpose(-1, -2), gather_tokens(t, moved))


def transform_tokens(
    x: Tensor, state: TokenState, kept: Tensor, moved: Tensor, assignment: Tensor
) -> tuple[Tensor, TokenState]:
    """X' = T X, size-weighted and mask-aware, carrying sizes (and source maps) through T."""
    return weighted_merge(x, state, partial(transform_sum, kept=kept, moved=moved, assignment=assignment))


def dense_transform(kept: Tensor, moved: Tensor, assignment: Tensor, tokens: int) -> Tensor:
    """The matrix T [B, N', N] that `transform_sum` applies (for tests and visualisation)."""
    columns = torch.arange(tokens, device=kept.device)
    own = (kept[..., None] == columns).to(assignment.dtype)
    extra = assignment.shape[-1] - kept.shape[1]
    own = torch.cat([own, own.new_zeros(own.shape[0], extra, tokens)], dim=1)
    return own + assignment.transpose(-1, -2) @ (moved[..., None] == columns).to(assignment.dtype)


def soft_assignment(scores: Tensor, k: int, temperature: float) -> Tensor:
    """[B, M, N'] scores -> shares: softmax(score / temperature) over each row's top k, 0 elsewhere.

    With k = 1 every share is exactly 1 (exclusive merging). Ties go to the lower index,
    as with torch.max, so k = 1 picks the same target as ToMe.
    """
    k = min(k, scores.shape[-1])
    top = scores.argsort(dim=-1, descending=True, stable=True)[..., :k]
    top_scores = scores.gather(-1, top)
    # Shift by the row maximum first: forbidden pairs are finite, so nothing becomes NaN.
    shares = torch.softmax((top_scores - top_scores[..., :1]) / temperature, dim=-1)
    slots = torch.arange(scores.shape[-1], device=scores.device)
    return (shares[..., None] * (top[..., None] == slots).to(shares.dtype)).sum(dim=-2)


# ------------------------------------------------------------------ choosing targets


@dataclass(frozen=True)
class TransformPlan:
    kept: Tensor  # [B, N'] tokens that become the output rows, in output order
    moved: Tensor  # [B, r] tokens whose mass is spread over the output rows
    scores: Tensor  # [B, r, N'] similarity of each moved token to each output row; forbidden pairs very low


def _forbid_pairs(scores: Tensor, moved_real: Tensor | None, kept_real: Tensor | None) -> Tensor:
    """Real tokens never go to padding; padding goes to padding first (ToMe's rule)."""
    if moved_real is None:
        return scores
    moved_real, kept_real = moved_real[:, :, None] > 0, kept_real[:, None, :] > 0
    low = torch.full_like(scores, torch.finfo(scores.dtype).min)
    scores = torch.where(moved_real & kept_real, scores, low)
    return torch.where(~moved_real & ~kept_real, torch.full_like(scores, _PAD_PAIR_SCORE), scores)


def plan_by_importance(
    metric: Tensor, importance: Tensor, r: int, protected: int, mask: Tensor | None
) -> TransformPlan:
    """Targets = the N - r most important tokens (protected first, then index order)."""
    kept, moved = split_by_importance(importance, metric.shape[1] - r, protected, mask)
    scores = gather_tokens(metric, moved) @ gather_tokens(metric, kept).transpose(-1, -2)
    scores = _forbid_pairs(
        scores,
        None if mask is None else gather_tokens(mask[..., None], moved)[..., 0],
        None if mask is None else gather_tokens(mask[..., None], kept)[..., 0],
    )
    # Protected tokens are the first kept rows; they never receive.
    receives = torch.arange(kept.shape[1], device=kept.device)[None, None, :] >= protected
    return TransformPlan(kept, moved, scores.masked_fill(~receives, torch.finfo(scores.dtype).min))


def plan_alternating(metric: Tensor, r: int, protected: int, mask: Tensor | None) -> TransformPlan:
    """ToMe's choice: A = even tokens, B = odd; the r best matched A tokens move into B.

    Output order [unmerged A in index order, all of B], as ToMe's, except that protected
    tokens always come first: a distillation token (B0) stays at index 1, where the next
    block protects it and the head reads it. Moved tokens may only go to B (bipartite),
    so k = 1 reproduces ToMe.
    """
    tokens = metric.shape[1]
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(-1, -2)
    if mask is not None:
        scores = _forbid_pairs(scores, mask[:, 0::2], mask[:, 1::2])
    low = torch.finfo(scores.dtype).min
    if protected >= 1:  # CLS (A0) never moves
        scores = scores.masked_fill(torch.arange(scores.shape[1], device=scores.device)[None, :, None] == 0, low)
    if protected >= 2:  # the distillation token (B0) never receives
        scores = scores.masked_fill(torch.arange(scores.shape[2], device=scores.device)[None, None, :] == 0, low)
    order = scores.max(dim=-1).values.argsort(dim=-1, descending=True, stable=True)
    src, unmerged = order[:, :r], order[:, r:].sort(dim=-1).values
    batch = metric.shape[0]
    a_index, b_index = 2 * unmerged, torch.arange(1, tokens, 2, device=metric.device).expand(batch, -1)
    kept = torch.cat([a_index, b_index], dim=1)
    to_b = scores.gather(1, src[..., None].expand(-1, -1, scores.shape[2]))
    # -inf, below every B score (even forbidden ones), so ties never pick an A token.
    to_unmerged_a = torch.full((batch, r, unmerged.shape[1]), -torch.inf, dtype=scores.dtype, device=scores.device)
    scores = torch.cat([to_unmerged_a, to_b], dim=-1)
    if protected >= 2:  # CLS (A0) is first already; bring B0 forward to index 1
        protected_first = (kept >= protected).to(torch.int64).argsort(dim=-1, stable=True)
        kept = kept.gather(1, protected_first)
        scores = scores.gather(2, protected_first[:, None, :].expand(-1, r, -1))
    return TransformPlan(kept, 2 * src, scores)


# ------------------------------------------------------------------ reducers


class TokenTransform(Reducer):
    """Many-to-many merging: each of r tokens is spread over its top-k most similar targets."""

    kind = "token_transform"

    def __init__(
        self,
        r: int,
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
        selection: str = DEFAULT_SELECTION,
        metric: str = DEFAULT_METRIC,
        protected: int = 1,
    ):
        super().__init__(protected)
        if r < 0:
            raise TokcompError(f"r must be >= 0, got {r}")
        if k < 1:
            raise TokcompError(f"k must be >= 1, got {k}", hint="k is the number of targets each token is spread over")
        if not temperature > 0:
            raise TokcompError(f"temperature must be > 0, got {temperature}")
        if selection not in TARGET_SELECTIONS:
            raise TokcompError(f"unknown target selection {selection!r}", hint=f"valid: {', '.join(TARGET_SELECTIONS)}")
        if metric not in METRICS:
            raise TokcompError(f"unknown metric {metric!r}", hint=f"valid: {', '.join(METRICS)}")
        self.r, self.k, self.temperature, self.selection, self.metric = r, k, temperature, selection, metric

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - capped_r(self.r, tokens_in, self.protected)

    def plan(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> TransformPlan | None:
        r = capped_r(self.r, x.shape[1], self.protected)
        if r == 0:
            return None
        metric = F.normalize(attn.key_metric() if self.metric == "keys" else x, dim=-1)
        if self.selection == "alternating":
            return plan_alternating(metric, r, self.protected, state.mask)
        return plan_by_importance(metric, attn.cls_attention(), r, self.protected, state.mask)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        plan = self.plan(x, state, attn)
        if plan is None:
            return x, state
        assignment = soft_assignment(plan.scores, self.k, self.temperature)
        return transform_tokens(x, state, plan.kept, plan.moved, assignment)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "r": self.r,
            "k": self.k,
            "temperature": self.temperature,
            "selection": self.selection,
            "metric": self.metric,
        }


def _exclusive_sum(t: Tensor, kept: Tensor, moved: Tensor, destination: Tensor) -> Tensor:
    """Each moved row added whole into one output row: the swappable index-merge step."""
    return index_merge_sum(t, kept, moved, destination)


class ExclusiveMerge(TokenTransform):
    """Each of r tokens merges whole into its most similar target (one non-zero per column of T).

    The k = 1 limit of TokenTransform, applied independently with scatter_add as ToMe
    and DiffRate do; with `alternating` targets it is ToMe, with `cls_attention` it is
    DiffRate's prune-then-merge rule (merging on keys by default).
    """

    kind = "exclusive_merge"

    def __init__(self, r: int, selection: str = DEFAULT_SELECTION, metric: str = DEFAULT_METRIC, protected: int = 1):
        super().__init__(r, k=1, temperature=1.0, selection=selection, metric=metric, protected=protected)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        plan = self.plan(x, state, attn)
        return (x, state) if plan is None else self.apply_plan(x, state, plan)

    @staticmethod
    def apply_plan(x: Tensor, state: TokenState, plan: TransformPlan) -> tuple[Tensor, TokenState]:
        """Every moved token whole into its best scored output row, size-weighted."""
        destination = plan.scores.max(dim=-1).indices
        merge_sum = partial(_exclusive_sum, kept=plan.kept, moved=plan.moved, destination=destination)
        return weighted_merge(x, state, merge_sum)

    def describe(self) -> dict:
        settings = super().describe()
        del settings["k"], settings["temperature"]
        return settings
