"""Token state carried between rewritten transformer blocks.

Every token has a *size* (how many input tokens it stands for), a *mask* flag
(1 = real token, 0 = padding; text models only) and optionally a *source* row
(which input tokens it covers, for visualisation).

Between rewritten blocks this state travels packed as extra channels of the
hidden-state tensor: [x (C) | size (1) | mask (1) | source (N0, when traced)].
The model's own layer loop (ViTModel, Dinov2Encoder, BertEncoder, timm's
nn.Sequential) passes one tensor from block to block, so packing needs no side
channel, no patched loop owner, and stays a pure tensor program that exports.
The first block builds the state; the last block unpacks it and returns plain x.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

# Number of bookkeeping channels always packed after the hidden channels (size, mask).
STATE_CHANNELS = 2


@dataclass(frozen=True)
class TokenState:
    size: Tensor  # [B, N] float: input tokens represented by each token
    mask: Tensor | None  # [B, N] float, 1 = real, 0 = padding; None = no padding possible
    source: Tensor | None = None  # [B, N, N0] float 0/1 map back to input tokens

    @staticmethod
    def initial(x: Tensor, key_mask: Tensor | None, trace_source: bool) -> TokenState:
        batch, tokens = x.shape[:2]
        size = x.new_ones(batch, tokens)
        mask = None if key_mask is None else key_mask.to(x.dtype)
        source = None
        if trace_source:
            source = torch.eye(tokens, dtype=x.dtype, device=x.device).expand(batch, tokens, tokens)
        return TokenState(size=size, mask=mask, source=source)

    def with_(self, **changes) -> TokenState:
        return replace(self, **changes)

    def attention_bias(self, proportional: bool) -> Tensor | None:
        """Additive key bias [B, 1, 1, N]: log(size) for proportional attention, -inf-like for padding."""
        bias = None
        if proportional:
            bias = torch.log(self.size)
        if self.mask is not None:
            neg = torch.finfo(self.size.dtype).min
            pad = torch.where(self.mask > 0, torch.zeros_like(self.mask), torch.full_like(self.mask, neg))
            bias = pad if bias is None else bias + pad
        return None if bias is None else bias[:, None, None, :]


def pack(x: Tensor, state: TokenState) -> Tensor:
    mask = state.mask if state.mask is not None else torch.ones_like(state.size)
    parts = [x, state.size[..., None].to(x.dtype), mask[..., None].to(x.dtype)]
    if state.source is not None:
        parts.append(state.source.to(x.dtype))
    return torch.cat(parts, dim=-1)


def unpack(packed: Tensor, hidden: int, uses_mask: bool, trace_source: bool) -> tuple[Tensor, TokenState]:
    x = packed[..., :hidden]
    size = packed[..., hidden]
    mask = packed[..., hidden + 1] if uses_mask else None
    source = packed[..., hidden + STATE_CHANNELS :] if trace_source else None
    return x, TokenState(size=size, mask=mask, source=source)


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
