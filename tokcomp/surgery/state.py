"""Token state carried between rewritten transformer blocks.

Every token has
- a *size*: how many input tokens it stands for (1 at the input; merging adds sizes);
- a *real* flag: False for padding (text); `real is None` when a model never pads;
- a *protected* flag: never removed, never merged, never a merge destination (CLS,
  distillation and register tokens; any span a caller marks);
- an original *position*: the input index of the token (of its representative, after a
  merge), for rotary-position models and order-preserving reduction;
- optionally a *source* row: which input tokens it covers (merge maps).

Invariant kept by every reducer: in each sample the real tokens come first and
padding last (the first rewritten block moves padding to the end; reducers write
their outputs that way). A sample's own token count is then the length of its
real prefix, and a batch is only as long as its longest sample needs.

Between rewritten blocks the state travels packed as extra channels of the hidden
tensor, in float32 whatever the model's dtype (float64 models: float64):

    [x (C) | size | real | protected | position | source (N0, when traced)]

float32 holds every integer below 2**24 exactly, so sizes and positions stay exact in
fp16 and bf16 models (bf16 alone is exact only to 256). The model's own layer loop
(ViTModel, Dinov2Encoder, BertEncoder, timm's nn.Sequential) passes one tensor from
block to block, so packing needs no side channel and stays a pure tensor program that
exports and compiles. The first block builds the state; the last returns plain x.

Eager on CPU (reducers/ops.py `eager_cpu_path`) the state rides along as an attribute of
the hidden tensor instead (`carry` / `receive`): packing copies the hidden states once per
block, and the strided channel slice a block then reads costs a second copy, which CPU
runs feel (measured: benchmarks/results/sentence_encode.md). The same loop passes the same
tensor object, so the attribute arrives; a loop that replaces the tensor between blocks
gets one clear error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tokcomp.errors import TokcompError

# Bookkeeping channels packed after the hidden channels: size, real, protected, position.
STATE_CHANNELS = 4
STATE_DTYPE = torch.float32


class TokenState(NamedTuple):
    size: Tensor  # [B, N] float32 (float64 in float64 models): see carrier_dtype
    real: Tensor | None  # [B, N] bool; None: the model never pads
    protected: Tensor  # [B, N] bool
    position: Tensor  # [B, N] int64, index of the input token
    source: Tensor | None = None  # [B, N, N0] 0/1 map back to input tokens, dtype of size

    @staticmethod
    def initial(x: Tensor, real: Tensor | None, protected_prefix: int, trace_source: bool) -> TokenState:
        """State of the input tokens: sizes 1, the first `protected_prefix` real tokens protected."""
        batch, tokens = x.shape[:2]
        positions = torch.arange(tokens, device=x.device)
        if real is None:
            protected = (positions < protected_prefix).expand(batch, tokens)
        else:  # with left padding the CLS token is not at index 0
            protected = real & (real.cumsum(dim=-1) <= protected_prefix)
        source = None
        if trace_source:
            source = torch.eye(tokens, dtype=carrier_dtype(x.dtype), device=x.device).expand(batch, tokens, tokens)
            if real is not None:  # padding stands for nothing
                source = source * real[..., None]
        return TokenState(
            size=torch.ones(batch, tokens, dtype=carrier_dtype(x.dtype), device=x.device),
            real=real,
            protected=protected,
            position=positions.expand(batch, tokens),
            source=source,
        )

    def free(self) -> Tensor:
        """Tokens a reducer may move, merge into or drop: real and not protected [B, N]."""
        return ~self.protected if self.real is None else self.real & ~self.protected

    def weight(self) -> Tensor:
        """Weight of each token in a size-weighted mean: its size, 0 for padding."""
        return self.size if self.real is None else self.size * self.real

    def attention_bias(
        self, proportional: bool, dtype: torch.dtype, causal: bool = False, window: int | None = None
    ) -> Tensor | None:
        """Additive attention bias: log(size) for proportional attention, padding masked.

        [B, 1, 1, N] over the keys; with `causal` (decoders) [B, 1, N, N]: query i sees key j
        only when j's original position is not after i's (and, with a sliding `window`, less
        than `window` positions before it). Positions travel with the tokens, so the mask
        stays right after tokens are dropped.
        """
        masked = torch.finfo(dtype).min
        bias = torch.log(self.size) if proportional else torch.zeros_like(self.size)
        if self.real is not None:
            bias = bias.masked_fill(~self.real, masked)
        if not causal:
            return bias.to(dtype)[:, None, None, :] if proportional or self.real is not None else None
        return causal_bias(self.position, self.position, bias, dtype, window)

    def gather(self, index: Tensor) -> TokenState:
        """The state of tokens `index` [B, K] (pruning, reordering); sizes and flags copied exactly."""
        return TokenState(
            size=self.size.gather(1, index),
            real=None if self.real is None else self.real.gather(1, index),
            protected=self.protected.gather(1, index),
            position=self.position.gather(1, index),
            source=None if self.source is None else self.source.gather(1, index[..., None].expand(-1, -1, self.source.shape[-1])),
        )


def causal_bias(
    query_position: Tensor, key_position: Tensor, key_bias: Tensor, dtype: torch.dtype, window: int | None = None
) -> Tensor:
    """[B, 1, Q, K] additive bias: query i sees key j when j's original position is not after i's
    (and, with a sliding `window`, less than `window` positions before it); `key_bias` [B, K] is
    added where visible (log sizes, padding already masked). Queries and keys may differ (a KV cache).
    """
    masked = torch.finfo(dtype).min
    visible = causal_visible(query_position[:, :, None], key_position[:, None, :], window)
    bias = torch.where(visible, key_bias[:, None, :], torch.full_like(key_bias[:, None, :], masked))
    return bias.to(dtype)[:, None]


def causal_visible(query_position: Tensor, key_position: Tensor, window: int | None = None) -> Tensor:
    """Whether a query sees a key (broadcasting bool): the key's original position is not after the
    query's and, with a sliding `window`, less than `window` positions before it."""
    visible = key_position <= query_position
    if window is not None:  # query - key < window, without an int64 tensor of every query-key pair
        visible &= key_position > query_position - window
    return visible


def reducible_tokens(state: TokenState, protected: int, tokens: int) -> int | Tensor:
    """Tokens a reducer may remove in each sample: real and not protected.

    An int when no sample is padded (every sample has `tokens - protected`), else [B].
    """
    if state.real is None:
        return tokens - protected
    return state.free().sum(dim=-1)


def real_count(state: TokenState, tokens: int) -> int | Tensor:
    """Real tokens of each sample: `tokens` when no sample is padded, else [B]."""
    return tokens if state.real is None else state.real.sum(dim=-1)


def real_first(state: TokenState) -> Tensor | None:
    """Token order [B, N] that moves padding behind the real tokens (stable), or None if none is padded."""
    if state.real is None:
        return None
    return (~state.real).to(torch.int8).argsort(dim=-1, stable=True)


def reorder(x: Tensor, state: TokenState, order: Tensor) -> tuple[Tensor, TokenState]:
    """x [B, N, C] and its state in token order `order` [B, N] (real_first's), rows gathered by the
    swappable token step (reducers/ops.py: whole rows on CPU, one node in an ONNX export)."""
    from tokcomp.reducers.ops import gather_tokens  # reducers import surgery: import late

    return gather_tokens(x, order), state.gather(order)


def carrier_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype hidden states travel and merge in: float32, or wider (float64 models stay float64)."""
    return torch.promote_types(dtype, STATE_DTYPE)


def pack(x: Tensor, state: TokenState) -> Tensor:
    dtype = carrier_dtype(x.dtype)
    real = state.real if state.real is not None else torch.ones_like(state.protected)
    parts = [
        x.to(dtype),
        state.size[..., None],
        real[..., None].to(dtype),
        state.protected[..., None].to(dtype),
        state.position[..., None].to(dtype),
    ]
    if state.source is not None:
        parts.append(state.source)
    return torch.cat(parts, dim=-1)


# Attribute of a hidden tensor that holds its TokenState on the eager CPU path (see the module docstring).
STATE_ATTRIBUTE = "_tokcomp_state"


def carry(x: Tensor, state: TokenState) -> Tensor:
    """What a block hands the next one: x with its state, packed (`pack`), or on the eager CPU path x
    itself with the state attached (x is the block's own fresh output)."""
    from tokcomp.reducers.ops import eager_cpu_path  # reducers import surgery: import late

    if not eager_cpu_path(x) or torch.jit.is_tracing():
        return pack(x, state)
    setattr(x, STATE_ATTRIBUTE, state)
    return x


def receive(hidden: Tensor, hidden_size: int, dtype: torch.dtype, padded: bool, trace_source: bool) -> tuple[Tensor, TokenState]:
    """What `carry` handed over: x and its state."""
    state = getattr(hidden, STATE_ATTRIBUTE, None)
    if state is not None:
        return hidden, state
    if hidden.shape[-1] == hidden_size:
        raise TokcompError(
            "a compressed block received hidden states without their token state: the model's layer loop "
            "replaced the tensor between two rewritten blocks",
            hint="pass each block's output unchanged to the next one (no hook or op between the blocks)",
        )
    return unpack(hidden, hidden_size, dtype, padded, trace_source)


def unpack(packed: Tensor, hidden: int, dtype: torch.dtype, padded: bool, trace_source: bool) -> tuple[Tensor, TokenState]:
    """Inverse of `pack`; x comes back in the model's `dtype` (exact: it was widened to float32),
    as a channel slice of `packed` where the dtypes agree (see BertTokenBlock on contiguity)."""
    x = packed[..., :hidden].to(dtype)
    state = TokenState(
        size=packed[..., hidden],
        real=packed[..., hidden + 1] > 0 if padded else None,
        protected=packed[..., hidden + 2] > 0,
        position=packed[..., hidden + 3].to(torch.int64),
        source=packed[..., hidden + STATE_CHANNELS :] if trace_source else None,
    )
    return x, state


def key_mask_from_attention_mask(attention_mask: Tensor | None, tokens: int) -> Tensor | None:
    """Turn the mask a Hugging Face model hands its layers into a [B, N] real-token flag.

    transformers builds a 4-D mask [B, 1, Q, N] (bool: True = attend; float: 0 = attend,
    large negative = masked) or passes None when nothing is padded. Query row 0 is the
    CLS token, which is always real, so its row is the key mask.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return attention_mask > 0
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != tokens:
        raise ValueError(f"unexpected attention mask shape {tuple(attention_mask.shape)} for {tokens} tokens")
    row = attention_mask[:, 0, 0, :]
    if row.dtype == torch.bool:
        return row
    return row > torch.finfo(row.dtype).min / 2
