"""Decoder LLMs (Gemma-3, Llama, Qwen2, Mistral): causal blocks with rotary positions and a KV cache.

Blocks live in `<model>.model.layers` (self_attn{q,k,v,o}_proj, optional q_norm / k_norm,
input_layernorm, post_attention_layernorm, mlp; Gemma-3 adds the sandwich norms
pre_ / post_feedforward_layernorm). A rewritten block differs from the original in
three ways that keep it exact when tokens are dropped:

- rotary embeddings: the model hands every layer cos / sin for the tokens of the call in
  input order; each kept token reads the row at its original position;
- masks: causal and sliding-window masks come from original positions (TokenState), not
  from tensor indices; padding is read from the 2-D attention mask the model was called
  with (captured by a pre-hook on the layer loop's owner). Kept tokens stay in input order,
  so an unpadded prefill needs no mask in full-attention layers (SDPA's is_causal) and an
  unpadded decoding step none at all; other masks are built once per call and shared;
- the KV cache: in prefill each layer stores only the tokens it saw (a layer after a
  reduction stores the kept ones), left-aligned (padding first), so the cache's own
  sliding-window trimming keeps the newest tokens. The original positions and padding
  flags of the cached keys are kept beside the cache (`cached_tokens`), so a decoding
  step's new token (at its original next position, from the model's position_ids)
  attends to exactly the kept entries, with the right causal and window masks. A KV
  selector (SnapKV, StreamingLLM) may instead leave prefill whole and store, in each
  full-attention layer, only the entries it chose per KV head; the record then holds one
  row of positions per KV head, and each query head reads its group's row.

A caller may narrow the reducible span of one call (`reducible_span`: a VLM's image tokens).

Reduction runs in prefill only (a call whose cache is still empty, or a call without a
cache); decoding steps never drop tokens. Supported caches: transformers' DynamicCache
(the one `generate` builds); beam search and cache cropping, which reorder or cut the
cache, are not.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokcomp.errors import SpanError, UnsupportedModelError
from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.adapters.common import adopt, linear_macs_outside
from tokcomp.surgery.attention import AttentionInfo, split_heads
from tokcomp.surgery.block import TokenBlock
from tokcomp.surgery.state import TokenState, carrier_dtype, causal_bias, causal_visible, real_first, receive, reorder

DECODER_TYPES = ("llama", "qwen2", "mistral", "gemma3_text")


@dataclass
class CallInputs:
    """What the layers need that the model does not hand them: the 2-D padding mask the layer loop's owner
    was called with, and the reducible span the caller marked (`reducible_span`), if any."""

    attention_mask: Tensor | None = None
    span: Tensor | tuple[int, int] | None = None
    selecting: bool = False  # GemFilter's first, partial run (stops at the selecting layer)
    # What the running call's layers may assume, set by the first block and updated by each reducing one;
    # each lets a layer skip work that would change nothing (attention's mask, rotary gathers, reordering).
    padded: bool = True  # some token may be padding (always assumed while tracing: see `may_pad`)
    whole: bool = False  # the layer holds every token of the call in input order: positions are start + arange
    ordered: bool = False  # positions increase along the token axis
    # What every layer would rebuild the same until the tokens change (masks by window, rotary rows by
    # table): built once, emptied when a call starts, after each reduction and when the call ends.
    shared: dict = field(default_factory=dict)


class _Selected(Exception):  # control flow, not an error
    """Ends GemFilter's selecting run at its layer, carrying the tokens kept there."""

    def __init__(self, state: TokenState):
        super().__init__()
        self.state = state


@dataclass
class CachedTokens:
    """Beside one KV cache: original positions and padding flags of each layer's cached keys.

    Per layer [B, Hs, L]: Hs = 1 when every KV head caches the same tokens (token drops, sliding
    layers), Hs = the KV heads when a cache compression chose tokens per head (SnapKV).
    """

    length: int = 0  # input tokens seen so far (prompt + generated): the next token's input index
    start: int = 0  # input index of the first token of the current call
    prefill: bool = True  # the current call is the first one (the only one that reduces)
    position: dict[int, Tensor] = field(default_factory=dict)  # layer -> [B, Hs, L] int64
    real: dict[int, Tensor] = field(default_factory=dict)  # layer -> [B, Hs, L] bool
    next_position: Tensor | None = None  # [B] rotary position of the next token, after a GemFilter prefill
    padded: bool = False  # some cached entry may be padding (a padded call, or a sample that kept fewer)


# Keyed by the cache object itself: a cache that is dropped takes its record with it.
_CACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def reducible_span(model: nn.Module, span: Tensor | tuple[int, int]):
    """Within the block, `model`'s prefill reduces only the tokens `span` marks (and never sinks or question).

    `span`: a [batch, prompt tokens] bool mask aligned with input_ids (True: reducible), or
    (start, end) input columns for every sample. A VLM passes its image-token span here.
    """
    call = next((block.call for block in model.modules() if isinstance(block, DecoderTokenBlock)), None)
    if call is None:
        raise SpanError(
            f"{type(model).__name__} has no tokcomp decoder layers to mark a span for",
            hint="apply a decoder pass (fastv, pyramid_drop, snapkv, streaming_llm) or load its checkpoint first",
        )
    if isinstance(span, tuple | list):
        span = tuple(int(i) for i in span)
        if len(span) != 2:
            raise SpanError(f"reducible span {span} is not (start, end)", hint="give two input columns")
    elif not isinstance(span, Tensor):
        raise SpanError(f"reducible span of type {type(span).__name__}", hint="give a bool mask or (start, end)")
    previous, call.span = call.span, span
    try:
        yield model
    finally:
        call.span = previous


def cache_keyword(model: nn.Module) -> str:
    """The name a causal LM's forward takes its KV cache under: `cache` since transformers 5.2x, before
    that `past_key_values` (both 5.x lines are supported)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cached_tokens(cache) -> CachedTokens | None:
    """The record kept beside `cache` (None without a cache)."""
    if cache is None:
        return None
    record = _CACHED.get(cache)
    if record is None:
        if cache.get_seq_length() > 0:
            raise UnsupportedModelError(
                "this KV cache was filled outside the tokcomp model (its kept positions are unknown)",
                hint="start generation from an empty cache (or none) on the compressed model",
            )
        record = _CACHED[cache] = CachedTokens()
    return record


def left_aligned(real: Tensor) -> Tensor:
    """Token order [B, N] that puts padding first and the real tokens after it, in order (stable)."""
    return real.to(torch.int8).argsort(dim=-1, stable=True)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (half-split convention of Hugging Face decoders): x [B, H, N, d], cos/sin [B, N, d]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """table [B or 1, T, d] read at index [B, N] -> [B, N, d]."""
    table = table.expand(index.shape[0], -1, -1)
    return table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]))


def _gather_heads(t: Tensor, index: Tensor) -> Tensor:
    """t [B, H, N, d] read at index [B, 1 or H, L] (one row of tokens for every head, or one per head)."""
    return t.gather(2, index[..., None].expand(-1, t.shape[1], -1, t.shape[-1]))


def stored_tokens(k: Tensor, v: Tensor, state: TokenState, index: Tensor | None = None):
    """This call's tokens `index` [B, Hs, L] (N: an empty slot; default: all), left-aligned (padding first)
    in every row: keys and values [B, Hkv, L, d], positions and real flags [B, Hs, L]."""
    batch, tokens = state.position.shape
    position, real = state.position[:, None], state.real[:, None]
    if index is None:
        index = torch.arange(tokens, device=k.device).expand(batch, 1, tokens)
    else:
        k, v = _with_null(k), _with_null(v)
        position, real = _with_null(position), _with_null(real)
    heads = index.shape[1]
    position = position.expand(-1, heads, -1).gather(-1, index)
    real = real.expand(-1, heads, -1).gather(-1, index)
    order = left_aligned(real)
    index, position, real = index.gather(-1, order), position.gather(-1, order), real.gather(-1, order)
    return _gather_heads(k, index), _gather_heads(v, index), position, real


# Tests set this to take the general path everywhere (masks, gathers, reordering), as if every call were padded.
_ASSUME_PADDING = False


def may_pad(real: Tensor | None) -> bool:
    """Whether some token of `real` [B, N] may be padding (None: the caller passed no mask).

    Read on the host once per call (and once per reduction), as transformers does before it drops its
    mask; while tracing (torch.compile, export, CUDA graph capture) reading it would break the graph,
    so padding is assumed there and the masked path, exact for any input, is traced.
    """
    if _ASSUME_PADDING:
        return True
    if real is None:
        return False
    capturing = torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or capturing:
        return True
    return not bool(real.all())


def key_mask(
    query_position: Tensor, key_position: Tensor, key_real: Tensor | None, window: int | None, dtype: torch.dtype
) -> Tensor:
    """[B, Hs, Q, K] additive mask (0: attend, -inf: hidden) of queries [B, Q] over keys [B, Hs, K] (one key
    row per KV head, or one for all): causal and sliding-window by original position, padding keys
    (key_real False) hidden.

    SDPA turns a bool mask into exactly this on every call (the same outputs, a row with no visible key
    included: zeros); built here, one mask serves every layer that shares it.
    """
    visible = causal_visible(query_position[:, None, :, None], key_position[:, :, None, :], window)
    if key_real is not None:
        visible &= key_real[:, :, None, :]
    return torch.full(visible.shape, float("-inf"), dtype=dtype, device=visible.device).masked_fill_(visible, 0.0)


def last_token_bias(state: TokenState, window: int | None, dtype: torch.dtype, padded: bool) -> Tensor | None:
    """[B, 1, 1, N] additive key bias of each sample's last real token over the layer's tokens (its row of the
    causal mask: padding and the sliding window), or None where it sees every token."""
    if not padded and window is None:  # the last token is the latest: every token is at or before it
        return None
    last = torch.where(state.real, state.position, -1).amax(dim=-1, keepdim=True)
    return causal_bias(last, state.position, padding_bias(state.real, dtype), dtype, window)


def repeat_heads(t: Tensor, groups: int) -> Tensor:
    """[B, Hkv, N, d] -> [B, Hkv * groups, N, d]: each KV head once per query head of its group (one copy)."""
    if groups == 1:
        return t
    batch, heads, tokens, dim = t.shape
    return t[:, :, None].expand(batch, heads, groups, tokens, dim).reshape(batch, heads * groups, tokens, dim)


def grouped_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float, dropout: float
) -> Tensor:
    """Attention of query heads [B, H, Q, d] over KV heads [B, Hkv, K, d] (query head h reads KV head
    h // (H / Hkv)) -> [B, H, Q, d]. `mask`: additive [B, 1 or Hkv, Q, K] (`key_mask`) or None; `causal`:
    SDPA's own causal mask (query i sees key j <= i).

    Without a mask SDPA reads the KV heads itself (enable_gqa: its fused kernels group heads only without
    a mask); a one-query step folds each group's query heads into its KV head's queries, so the cache
    is not copied per head; otherwise the KV heads are repeated.
    """
    batch, heads, queries, dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    options = {"dropout_p": dropout, "scale": scale}
    if groups == 1 or mask is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=groups > 1, **options
        )
    if queries == 1:  # the mask [B, 1 or Hkv, 1, K] covers the folded query heads
        out = F.scaled_dot_product_attention(q.reshape(batch, kv_heads, groups, dim), k, v, attn_mask=mask, **options)
        return out.reshape(batch, heads, 1, dim)
    if mask.shape[1] > 1:  # keys chosen per KV head: each query head reads its group's row
        mask = mask.repeat_interleave(groups, dim=1)
    k, v = repeat_heads(k, groups), repeat_heads(v, groups)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **options)


def _with_null(t: Tensor) -> Tensor:
    """t [B, H, N, ...] with a zero (False) token appended: what index N (an empty slot) reads."""
    return torch.cat([t, torch.zeros_like(t[:, :, :1])], dim=2)


class DecoderTokenBlock(TokenBlock):
    def __init__(
        self,
        original: nn.Module,
        hidden_size: int,
        index: int,
        num_blocks: int,
        window: int | None,
        call: CallInputs,
    ):
        super().__init__(hidden_size, index, num_blocks, padded=True, protected=0)
        self.sandwich = hasattr(original, "pre_feedforward_layernorm")  # Gemma's norms around attention and MLP
        names = ["self_attn", "mlp", "input_layernorm", "post_attention_layernorm"]
        if self.sandwich:
            names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        adopt(self, original, names)
        self.layer_index = index
        self.window = window
        self.call = call
        # The reducible span: everything but the first `sink` and the last `question` real tokens.
        self.sink = 0
        self.question = 0
        self.span_from_call = False  # only the tokens the call marks (reducible_span) are reducible
        self.preserve_order = True  # causality: kept tokens stay in input order
        # Cache compression after prefill (SnapKV, StreamingLLM): which tokens each KV head stores.
        self.kv_selector: nn.Module | None = None
        # GemFilter: the first block re-runs the model on the tokens a first, partial run selected (None: off;
        # True / False: the selected tokens take contiguous / their original positions); the selecting
        # layer's reducer acts only in that partial run.
        self.filter_contiguous: bool | None = None
        self.select_only = False

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,  # the model's 4-D mask: unused, masks come from positions
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        cache=None,
        **kwargs,
    ) -> Tensor:
        cache = cache if cache is not None else kwargs.get("past_key_values")
        if self.is_first:  # creates the cache's record on the first call
            record = cached_tokens(cache)
            x, state = self._start(hidden_states, record)
        else:
            record = None if cache is None else _CACHED.get(cache)
            x, state = receive(hidden_states, self.hidden_size, next(self.parameters()).dtype, True, self.trace_source)
        prefill = record is None or record.prefill
        start = 0 if record is None else record.start
        reduces = self.reducer is not None and prefill and (self.call.selecting or not self.select_only)
        x, info = self.attention_residual(x, state, position_embeddings, cache, record, start, reduces)
        if reduces:
            x, state = self.reducer(x, state, info)
            if self.preserve_order:
                from tokcomp.reducers.apply import in_input_order  # reducers import surgery: import late

                x, state = in_input_order(x, state)
            call = self.call
            call.whole, call.ordered = False, call.ordered and self.preserve_order
            call.padded = call.padded or may_pad(state.real)  # a sample that keeps fewer is padded to the longest
            call.shared.clear()
            if call.selecting:
                raise _Selected(state)
        x = self.mlp_residual(x)
        if self.is_last:
            self.call.shared.clear()
            if self.call.padded:  # back to the caller's layout (left padding): every sample's last token is last
                order = left_aligned(state.real)
                x, state = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1])), state.gather(order)
        return self._leave(x, state)

    def capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pre-hook on the layer loop's owner: keep the 2-D padding mask its layers are not given."""
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is not None and not (isinstance(mask, Tensor) and mask.dim() == 2):
            raise UnsupportedModelError(
                "the compressed decoder needs the 2-D attention mask (batch x tokens)",
                hint="pass attention_mask as the tokenizer returns it, not a prepared 4-D mask",
            )
        self.call.attention_mask = mask
        if self.call.selecting:
            return None
        if self.filter_contiguous is not None:
            return self._filtered_call(module, args, kwargs, mask)
        # A plain call after a compressed prefill: the next positions follow the tokens seen, not the
        # cache's length (a compressed layer 0 holds fewer entries than tokens were seen).
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        record = None if cache is None else _CACHED.get(cache)
        if record is not None and record.length and kwargs.get("position_ids") is None and len(args) <= 2:
            tokens = kwargs.get("input_ids", args[0] if args else None)
            tokens = (tokens if tokens is not None else kwargs["inputs_embeds"]).shape[1]
            kwargs["position_ids"] = (record.length + torch.arange(tokens, device=cache.layers[0].keys.device))[None]
            return args, kwargs
        return None

    def _filtered_call(self, module: nn.Module, args: tuple, kwargs: dict, mask: Tensor | None):
        """GemFilter: in prefill, run the model up to the selecting layer, then hand the model only the selected
        tokens (input order, original or contiguous positions); in decoding, continue those positions."""
        kwargs = {**dict(zip(("input_ids", "attention_mask"), args, strict=False)), **kwargs}
        cache_key = "past_key_values" if "past_key_values" in kwargs else cache_keyword(module)
        cache = kwargs.get(cache_key)
        use_cache = kwargs.get("use_cache")
        if cache is None and (getattr(module.config, "use_cache", False) if use_cache is None else use_cache):
            # The model would build its cache only after this hook: build it now, so its record is kept from
            # the start and a later call through it continues the selected tokens' positions.
            from transformers import DynamicCache

            cache = kwargs[cache_key] = DynamicCache(config=module.config)
        record = cached_tokens(cache)
        name = "input_ids" if kwargs.get("input_ids") is not None else "inputs_embeds"
        batch, tokens = kwargs[name].shape[:2]
        device = kwargs[name].device
        if record is not None and record.length:
            kwargs["position_ids"] = record.next_position[:, None] + torch.arange(tokens, device=device)
            record.next_position = record.next_position + tokens
            return (), kwargs
        self.call.selecting = True
        try:
            module(**{**kwargs, cache_key: None, "use_cache": False})
            raise AssertionError("the selecting layer was not reached")  # a bug, not a user error
        except _Selected as selected:
            state = selected.state
        finally:
            self.call.selecting = False
            self.call.attention_mask = mask
        order = left_aligned(state.real)
        real = state.real.gather(1, order)
        index = torch.where(real, state.position.gather(1, order), 0)
        picked = kwargs[name].gather(
            1, index if name == "input_ids" else index[..., None].expand(-1, -1, kwargs[name].shape[-1])
        )
        positions = kwargs.get("position_ids")
        positions = torch.arange(tokens, device=device).expand(batch, tokens) if positions is None else positions
        positions = positions.expand(batch, tokens).gather(1, index)
        if self.filter_contiguous:  # as if the selected tokens were the prompt (left padding as generate counts it)
            positions = (real.long().cumsum(dim=-1) - 1).masked_fill(~real, 1)
        kwargs.update({name: picked, "position_ids": positions, "attention_mask": real.long()})
        self.call.attention_mask = kwargs["attention_mask"]
        if record is not None:
            record.next_position = torch.where(real, positions, -1).max(dim=-1).values + 1
        return (), kwargs

    def _start(self, hidden_states: Tensor, record: CachedTokens | None) -> tuple[Tensor, TokenState]:
        """The state of this call's tokens: input indices after what the cache holds, padding, the span."""
        batch, tokens = hidden_states.shape[:2]
        mask = self.call.attention_mask
        if mask is None:
            real = torch.ones(batch, tokens, dtype=torch.bool, device=hidden_states.device)
        else:
            real = mask[:, -tokens:].to(device=hidden_states.device, dtype=torch.bool)
        padded = may_pad(None if mask is None else real)
        start = 0
        if record is not None:
            start, record.prefill = record.length, record.length == 0
            record.start, record.length = start, start + tokens
        prefill = record is None or record.prefill
        position = (start + torch.arange(tokens, device=hidden_states.device)).expand(batch, tokens)
        protected = torch.zeros_like(real)
        if prefill and (self.filter_contiguous is None or self.call.selecting):  # GemFilter's re-run reduces nothing
            # sinks: the first real tokens; the question: the last ones; and what the call did not mark
            from_start = real.cumsum(dim=-1)
            from_end = real.flip(-1).cumsum(dim=-1).flip(-1)
            protected = real & ((from_start <= self.sink) | (from_end <= self.question) | ~self._call_span(real))
        size = torch.ones(batch, tokens, dtype=carrier_dtype(hidden_states.dtype), device=hidden_states.device)
        state = TokenState(size=size, real=real, protected=protected, position=position)
        order = real_first(state) if self.compact_padding and prefill and padded else None
        self.call.padded, self.call.whole, self.call.ordered = padded, order is None, order is None
        self.call.shared.clear()
        if order is None:
            return hidden_states, state
        return reorder(hidden_states, state, order)

    def _call_span(self, real: Tensor) -> Tensor:
        """[B, N] tokens the call marked reducible (every token without a mark, unless the recipe requires one)."""
        span = self.call.span
        if span is None:
            if self.span_from_call:
                raise SpanError(
                    "this compressed model reduces only the span each call marks, and the call marked none",
                    hint="wrap the call in tokcomp.reducible_span(model, mask), or compile with span: prompt",
                )
            return torch.ones_like(real)
        batch, tokens = real.shape
        if isinstance(span, tuple):
            start, end = span
            if not 0 <= start <= end <= tokens:
                raise SpanError(
                    f"reducible span ({start}, {end}) lies outside the {tokens}-token prompt",
                    hint=f"give 0 <= start <= end <= {tokens} (input columns, padding included)",
                )
            column = torch.arange(tokens, device=real.device)
            marked = ((column >= start) & (column < end)).expand(batch, tokens)
        else:
            if span.dim() != 2 or span.shape[0] != batch or span.shape[1] > tokens:
                raise SpanError(
                    f"reducible span of shape {tuple(span.shape)} does not fit the {batch} x {tokens} prompt",
                    hint="mark the span with a [batch, prompt tokens] mask aligned with input_ids",
                )
            # A mask shorter than the call covers its first columns (generate without a cache appends tokens).
            marked = F.pad(span.to(device=real.device, dtype=torch.bool), (0, tokens - span.shape[1]))
        if (marked & ~real).any():
            raise SpanError(
                "the reducible span marks padding, outside the prompt",
                hint="mark only real prompt tokens (where attention_mask is 1)",
            )
        return marked

    def attention_residual(
        self,
        x: Tensor,
        state: TokenState,
        rotary: tuple[Tensor, Tensor],
        cache,
        record: CachedTokens | None,
        start: int,
        reduces: bool,
    ) -> tuple[Tensor, AttentionInfo | None]:
        """x after attention and its residual; the attention info a reducer reads when this layer `reduces`."""
        attn = self.self_attn
        head_dim = attn.head_dim
        h = self.input_layernorm(x)
        q = split_heads(attn.q_proj(h), head_dim)
        k = split_heads(attn.k_proj(h), head_dim)
        v = split_heads(attn.v_proj(h), head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = self._rotary(rotary, state, start)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        key_position, key_real, keys, values, own_keys = state.position[:, None], state.real[:, None], k, v, True
        if cache is not None:
            keys, values, key_position, key_real, own_keys = self._cache_update(
                cache, record, q, k, v, state, attn.scaling
            )
        prefill = record is None or record.prefill  # the keys are this call's tokens (as the queries)
        padded = self.call.padded or (not prefill and record.padded)
        mask, causal = self._attention_mask(state, key_position, key_real, own_keys, padded, prefill, q.dtype)
        dropout = attn.attention_dropout if self.training else 0.0
        out = grouped_attention(q, keys, values, mask, causal, attn.scaling, dropout)
        batch, heads, tokens, dim = out.shape
        out = attn.o_proj(out.transpose(1, 2).reshape(batch, tokens, heads * dim))
        if self.sandwich:
            out = self.post_attention_layernorm(out)
        if not reduces:
            return x + out, None
        # What a reducer scores: this call's own tokens in their current order (the cache may hold them
        # left-aligned). The decoder's reducers read the last token's row only, so only that row is built.
        bias = last_token_bias(state, self.window, q.dtype, self.call.padded)
        key = repeat_heads(k, q.shape[1] // k.shape[1])
        return x + out, AttentionInfo(query=q, key=key, bias=bias, scale=attn.scaling)

    def _rotary(self, rotary: tuple[Tensor, Tensor], state: TokenState, start: int) -> tuple[Tensor, Tensor]:
        """cos / sin [B or 1, N, d] of the layer's tokens. The model's rows cover this call's tokens in input
        order, so each token reads row (original position - start): the rows themselves while none is dropped."""
        if self.call.whole:
            return rotary
        # The model hands layers of one kind (Gemma-3: sliding or full) the same table.
        table, shared = self.call.shared.get(("rotary", self.window), (None, None))
        if table is not rotary[0]:
            rows = (state.position - start).clamp(min=0, max=rotary[0].shape[1] - 1)
            shared = gather_rows(rotary[0], rows), gather_rows(rotary[1], rows)
            self.call.shared[("rotary", self.window)] = rotary[0], shared
        return shared

    def _attention_mask(
        self,
        state: TokenState,
        key_position: Tensor,
        key_real: Tensor,
        own_keys: bool,
        padded: bool,
        prefill: bool,
        dtype: torch.dtype,
    ) -> tuple[Tensor | None, bool]:
        """(additive mask [B, 1 or Hs, Q, K] or None, SDPA's is_causal) of this layer's queries over its keys.

        Kept tokens stay in input order, so when nothing is padded and the keys are the queries' own
        tokens (prefill, the KV-selector prefill included) "key position <= query position" is index
        order j <= i: SDPA's causal mask, with no mask in memory and the fused kernels free to run. A
        sliding window changes nothing while the whole call fits in it. A decoding step (one query, no
        padding, full attention) sees every cached entry. Everything else gets the mask from positions,
        in prefill built once for the layers of one window that see the same tokens.
        """
        if not padded:
            fits_window = self.window is None or (self.call.whole and key_position.shape[-1] <= self.window)
            if own_keys and self.call.ordered and fits_window:
                return None, True
            if not own_keys and state.position.shape[1] == 1 and self.window is None:
                return None, False
        mask = self.call.shared.get(("mask", self.window)) if prefill else None
        if mask is None:
            mask = key_mask(state.position, key_position, key_real if padded else None, self.window, dtype)
            if prefill:
                self.call.shared[("mask", self.window)] = mask
        return mask, False

    def _cache_update(self, cache, record: CachedTokens, q: Tensor, k: Tensor, v: Tensor, state: TokenState, scale):
        """Append this call's keys / values (left-aligned) to the cache; keys, values, positions and flags to
        attend to, and whether those are exactly this call's tokens in the queries' order.

        Prefill with a KV selector (full-attention layers only: a sliding layer's cache is bounded by its
        window already) attends to every prompt token but stores only the tokens selected per KV head.
        """
        position, real = state.position[:, None], state.real[:, None]
        own_keys = record.prefill and not self.call.padded  # left-aligning moves nothing
        record.padded = record.padded or self.call.padded
        if record.prefill:
            k_all, v_all = k, v
            if not own_keys:
                k_all, v_all, position, real = stored_tokens(k, v, state)
            if self.kv_selector is not None and self.window is None:
                kept = stored_tokens(k, v, state, self.kv_selector(q, k, state, scale))
                record.padded = record.padded or may_pad(kept[3])  # a sample that keeps fewer has empty slots
                self._store(cache, record, *kept)
                return k_all, v_all, position, real, own_keys
            k, v = k_all, v_all
        previous_position = record.position.get(self.layer_index, position[..., :0])
        previous_real = record.real.get(self.layer_index, real[..., :0])
        keys, values = cache.update(k, v, self.layer_index)
        heads = max(previous_position.shape[1], position.shape[1])  # a new token is cached by every head
        key_position = torch.cat([previous_position, position.expand(-1, heads, -1)], dim=-1)
        key_real = torch.cat([previous_real, real.expand(-1, heads, -1)], dim=-1)
        if keys.shape[2] != key_position.shape[-1]:
            raise UnsupportedModelError(
                f"the KV cache returned {keys.shape[2]} keys where {key_position.shape[-1]} were expected",
                hint="use transformers' DynamicCache (generate's default) with the compressed model",
            )
        stored = cache.layers[self.layer_index].keys.shape[2]  # a sliding-window layer keeps only the newest
        record.position[self.layer_index] = key_position[..., -stored:] if stored else key_position[..., :0]
        record.real[self.layer_index] = key_real[..., -stored:] if stored else key_real[..., :0]
        return keys, values, key_position, key_real, own_keys

    def _store(self, cache, record: CachedTokens, k: Tensor, v: Tensor, position: Tensor, real: Tensor) -> None:
        """Prefill of a compressed layer: the cache holds only the selected entries."""
        cache.update(k, v, self.layer_index)
        if cache.layers[self.layer_index].keys.shape[2] != position.shape[-1]:
            raise UnsupportedModelError(
                "the KV cache trimmed a compressed layer's entries",
                hint="use transformers' DynamicCache (generate's default) with the compressed model",
            )
        record.position[self.layer_index], record.real[self.layer_index] = position, real

    def mlp_residual(self, x: Tensor) -> Tensor:
        if self.sandwich:
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x + self.mlp(self.post_attention_layernorm(x))

    def extra_repr(self) -> str:
        return f"index={self.index}, window={self.window}, sink={self.sink}, question={self.question}"


def padding_bias(real: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, K] additive key bias: 0 for real tokens, the dtype's minimum for padding."""
    zero = torch.zeros(real.shape, dtype=dtype, device=real.device)
    return torch.where(real, zero, torch.full_like(zero, torch.finfo(dtype).min))


class DecoderAdapter(Adapter):
    family = "decoder"
    description = "decoder LLMs (" + ", ".join(DECODER_TYPES) + "): causal, sliding-window, rotary, KV cache"
    modality = "text"

    def matches(self, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in DECODER_TYPES

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        for name, module in model.named_modules():
            if name.endswith("layers") and isinstance(module, nn.ModuleList) and name.count(".") <= 1:
                return name, module
        raise ValueError(f"no decoder layers found in {type(model).__name__}")

    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock:
        config = model.config
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise UnsupportedModelError(
                f"{type(model).__name__} caps attention logits (attn_logit_softcapping), which tokcomp does not",
                hint="use a model without attention soft-capping (Gemma-3, Llama, Qwen2, Mistral)",
            )
        name, blocks = self.block_list(model)
        call = CallInputs() if index == 0 else blocks[0].call
        rewritten = DecoderTokenBlock(block, config.hidden_size, index, num_blocks, layer_window(config, index), call)
        if index == 0:  # a bound method, so a deep copy of the model hooks into its own copy
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            owner.register_forward_pre_hook(rewritten.capture_inputs, with_kwargs=True)
        return rewritten

    def protected_tokens(self, model: nn.Module) -> int:
        return 0  # the span is set by the pass (sinks and question)

    def default_input(self, model: nn.Module, image_size: int | None = None, sequence_length: int | None = None):
        return InputSpec("text", sequence_length=sequence_length or 1024)

    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry:
        config = model.config
        name, blocks = self.block_list(model)
        embeddings = name.rsplit(".", 1)[0] + ".embed_tokens" if "." in name else "embed_tokens"
        attn = blocks[0].self_attn
        projections = sum(attn.get_submodule(p).weight.numel() for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        return Geometry(
            num_layers=len(blocks),
            hidden_size=config.hidden_size,
            mlp_macs_per_token=3 * config.hidden_size * config.intermediate_size,  # gated MLP
            input_tokens=spec.sequence_length,
            embed_macs=0,
            head_macs=linear_macs_outside(model, (name, embeddings)),
            attention_macs_per_token=projections,
            attention_width=attn.q_proj.out_features,
            causal=True,
            windows=tuple(layer_window(config, i) for i in range(len(blocks))),
        )


def layer_window(config, index: int) -> int | None:
    """The sliding window of layer `index`, or None for full attention."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return config.sliding_window if layer_types[index] == "sliding_attention" else None
    if getattr(config, "model_type", None) == "mistral":
        return getattr(config, "sliding_window", None)
    return None
