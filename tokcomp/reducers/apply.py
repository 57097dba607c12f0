"""Applying a reduction to the tokens: one implementation of select, merge and spread.

Every reducer chooses, per sample, which tokens stay (`kept`, in output order) and which
tokens move into others (`src` -> output rows `dst`, or spread by an `assignment`), then
calls one of these. They carry the token state (surgery/state.py) along:
- x is averaged with token weights (size, 0 for padding), so a merged token stands for
  the mean of the input tokens it covers; the arithmetic runs in float32, so sizes stay
  exact in fp16 and bf16 models;
- real tokens come first in every sample and padding last (the state's invariant).

Samples of a padded batch keep different numbers of tokens, but the tensor has one
length (the longest sample's). Index `null` (= N, one past the last token) fills the
rest: it reads a zero row appended for the purpose, so a `kept` slot holding it is an
empty padding row and a `src` slot holding it moves nothing.

An exclusive merge run eagerly on CPU (`in_place_path`) updates only the rows that change
(`merge_into_kept_rows`): the same means up to rounding, with far fewer passes over the
tokens. Everything traced, exported or on GPU runs the one dense `merge`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.ops import (
    eager_cpu_path,
    flat_rows,
    gather_tokens,
    gather_tokens_reference,
    index_merge_sum,
    positions,
    references_active,
)
from tokcomp.reducers.rate import Count
from tokcomp.surgery.state import TokenState, carrier_dtype, pack, unpack


def first(order: Tensor, count: Count, length: int, null: int) -> Tensor:
    """The first `count` entries of each row of `order` [B, N], then `null`: [B, length]."""
    head = order[:, :length]
    if isinstance(count, int) and count >= length:
        return head
    slots = positions(length, order)
    limit = count[:, None] if isinstance(count, Tensor) else count
    return torch.where(slots < limit, head, null)


def inverse(order: Tensor, width: int | None = None) -> Tensor:
    """Where each token sits in `order` [B, N] (the inverse permutation); with `width` > N, [B, width]
    with 0 in the columns past N (what the null index reads, without a concatenation)."""
    batch, tokens = order.shape
    ranks = positions(tokens, order).expand_as(order)
    return order.new_zeros(batch, width or tokens).scatter(1, order, ranks)


def with_null(t: Tensor) -> Tensor:
    """t [B, N, ...] with what index N reads appended: zeros (False for flags)."""
    return torch.cat([t, torch.zeros_like(t[:, :1])], dim=1)


def in_input_order(x: Tensor, state: TokenState) -> tuple[Tensor, TokenState]:
    """The tokens sorted back into the order of their original positions, padding last.

    For models where order carries meaning (time in audio, causality in decoders): any
    reducer's output, put back in order with one gather.
    """
    behind = torch.iinfo(torch.int32).max  # above any position: padding sorts after every real token
    key = state.position if state.real is None else torch.where(state.real, state.position, state.position + behind)
    return select(x, state, key.argsort(dim=-1, stable=True))


def select(x: Tensor, state: TokenState, index: Tensor, null: bool = False) -> tuple[Tensor, TokenState]:
    """Keep the tokens at `index` [B, K] (pruning, reordering); values and state copied exactly.

    x and its state are gathered as one packed tensor: one gather (one `GatherTokens` node
    in the tokcomp ONNX flavour) instead of one per field.
    """
    packed = pack(x, state)
    if null:
        packed = with_null(packed)
    picked = gather_tokens(packed, index)
    x, picked_state = unpack(picked, x.shape[-1], x.dtype, state.real is not None, state.source is not None)
    if null and picked_state.real is not None:  # a null row has size 0: make it 1 like all padding
        picked_state = picked_state._replace(size=torch.where(picked_state.real, picked_state.size, 1.0))
    return x, picked_state


def weighted_rows(x: Tensor, weight: Tensor, extras: list[Tensor], null: bool) -> Tensor:
    """[x * weight | weight | *extras] [B, N, ...], with the zero row index N reads when `null`.

    On the eager CPU path written into one fresh buffer: the two concatenations were two of
    the merge's ten passes over the tokens. Elsewhere concatenated (what export and compile trace),
    and so under autograd, which `out=` writes do not support.
    """
    if not eager_cpu_path(x) or x.requires_grad or weight.requires_grad:
        t = torch.cat([x * weight[..., None], weight[..., None], *extras], dim=-1)
        return with_null(t) if null else t
    batch, tokens, hidden = x.shape
    t = x.new_empty(batch, tokens + int(null), hidden + 1 + sum(extra.shape[-1] for extra in extras))
    torch.mul(x, weight[..., None], out=t[:, :tokens, :hidden])
    t[:, :tokens, hidden] = weight
    start = hidden + 1
    for extra in extras:
        t[:, :tokens, start : start + extra.shape[-1]] = extra
        start += extra.shape[-1]
    if null:
        t[:, tokens] = 0
    return t


def merge(
    x: Tensor,
    state: TokenState,
    kept: Tensor,
    src: Tensor,
    dst: Tensor | None = None,
    assignment: Tensor | None = None,
    scale: Tensor | None = None,
    null: bool = False,
    preserve_norm: bool = False,
) -> tuple[Tensor, TokenState]:
    """Output row i = weighted mean of token kept[i] and every token moved into row i.

    Exclusive: token src[b, s] moves whole into output row dst[b, s]. Spread (Token
    Transforming): it moves a share assignment[b, s, i] into each output row i (shares of
    a row of `assignment` sum to 1). `scale` [B, N] multiplies token weights (EViT's
    attention shares). Sizes follow the same sums, so token mass is conserved.

    With `preserve_norm` each output row is rescaled to the weighted mean of its tokens'
    norms: a mean of tokens pointing different ways is shorter than any of them, which the
    next layers read as a different token.
    """
    if assignment is None and scale is None and state.source is None and in_place_path(x, state):
        return merge_into_kept_rows(x, state, kept, src, dst, null, preserve_norm)
    dtype = carrier_dtype(x.dtype)
    weight = state.weight() if scale is None else state.weight() * scale
    extras = []
    if preserve_norm:
        extras.append(x.to(dtype).norm(dim=-1, keepdim=True) * weight[..., None])
    if state.source is not None:  # the source map follows T itself (scaled rows included)
        extras.append(state.source if scale is None else state.source * scale[..., None])
    t = weighted_rows(x.to(dtype), weight, extras, null)
    if assignment is None:
        out = index_merge_sum(t, kept, src, dst)
    else:
        out = torch.baddbmm(gather_tokens(t, kept), assignment.transpose(-1, -2).to(t.dtype), gather_tokens(t, src))
    hidden = x.shape[-1]
    total = out[..., hidden]
    real = total > 0
    size = torch.where(real, total, torch.ones_like(total))
    merged_x = out[..., :hidden] / size[..., None]
    extra = hidden + 1  # where the source map starts
    if preserve_norm:
        norm = out[..., extra] / size
        merged_x = merged_x * (norm / merged_x.norm(dim=-1).clamp_min(torch.finfo(merged_x.dtype).tiny))[..., None]
        extra += 1
    merged_x = merged_x.to(x.dtype)
    protected, position = state.protected, state.position
    if null:
        protected, position = with_null(protected), with_null(position)
    return merged_x, TokenState(
        size=size,
        real=real if state.real is not None else None,
        protected=protected.gather(1, kept),
        position=position.gather(1, kept),
        source=out[..., extra:] if state.source is not None else None,
    )


def in_place_path(x: Tensor, state: TokenState) -> bool:
    """Whether an exclusive merge may update only the rows it changes (merge_into_kept_rows): eager on
    CPU (eager_cpu_path), without gradients, with the reference token ops in use (export swaps them)."""
    return eager_cpu_path(x) and not (x.requires_grad or state.size.requires_grad) and references_active()


def merge_into_kept_rows(
    x: Tensor, state: TokenState, kept: Tensor, src: Tensor, dst: Tensor, null: bool, preserve_norm: bool
) -> tuple[Tensor, TokenState]:
    """`merge`'s exclusive case, touching only the rows that change (see in_place_path).

    Output row i starts as token kept[i]; each moved token s then joins its row r = dst[s]:
    row += w_s (x_s - row) / W_r, with W_r the row's summed weight. That is the same
    size-weighted mean (up to rounding) from one copy of the kept rows, where the dense merge
    writes a weighted copy of every token, gathers the kept rows from it and divides them by
    their weights: short inputs on CPU feel every pass.
    """
    dtype = carrier_dtype(x.dtype)
    tokens, hidden = x.shape[1:]
    weight = state.size.new_zeros(state.size.shape[0], tokens + int(null))  # index N (null) weighs 0
    if state.real is None:
        weight[:, :tokens] = state.size
    else:
        torch.mul(state.size, state.real, out=weight[:, :tokens])
    moved_weight = weight.gather(1, src)
    total = weight.gather(1, kept).scatter_add(1, dst, moved_weight)
    last_kept = kept.clamp(max=tokens - 1)  # null slots read the last token, then are emptied
    out = gather_tokens_reference(x, last_kept).to(dtype)  # a fresh tensor: written in place
    rows = out.view(-1, hidden)
    # a slot past a sample's end is an empty padding row (filled by row index: a broadcast masked_fill_ is slower)
    if null:
        rows.index_fill_(0, (kept == tokens).view(-1).nonzero().squeeze(1), 0)
    if src.shape[1]:
        moved = gather_tokens_reference(x, src.clamp(max=tokens - 1)).to(dtype).view(-1, hidden)
        # an idle slot (src = null) weighs 0: it adds nothing to its row
        share = moved_weight / total.gather(1, dst).clamp_min(torch.finfo(dtype).tiny)
        join_rows(rows, flat_rows(dst, out.shape[1]), moved, share.view(-1), preserve_norm)
    real = total > 0
    protected, position = state.protected.gather(1, last_kept), state.position.gather(1, last_kept)
    if null:  # what the null row holds: not protected, position 0
        protected &= real
        position.masked_fill_(~real, 0)
    return out.to(x.dtype), TokenState(
        size=torch.where(real, total, torch.ones_like(total)),
        real=real if state.real is not None else None,
        protected=protected,
        position=position,
    )


def join_rows(rows: Tensor, row_of: Tensor, moved: Tensor, share: Tensor, preserve_norm: bool) -> None:
    """In place: rows[row_of[s]] += share[s] (moved[s] - rows[row_of[s]]) for every slot s at once.

    Shares are of each row's final weight, so a row joined by several tokens ends at their
    weighted mean. With `preserve_norm` each changed row is then rescaled to the same mean
    of its tokens' norms (what `merge` does for every row).
    """
    before = rows.index_select(0, row_of)
    rows.index_add_(0, row_of, (moved - before) * share[:, None])
    if not preserve_norm:
        return
    norm_before = before.norm(dim=-1)
    gain = torch.zeros_like(rows[:, 0]).index_add_(0, row_of, share * (moved.norm(dim=-1) - norm_before))
    goal = norm_before + gain.index_select(0, row_of)
    after = rows.index_select(0, row_of)
    rows.index_copy_(0, row_of, after * (goal / after.norm(dim=-1).clamp_min(torch.finfo(rows.dtype).tiny))[:, None])
