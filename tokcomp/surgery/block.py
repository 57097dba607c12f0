"""The rewritten transformer block every adapter builds on.

A `TokenBlock` adopts the original block's child modules under the same attribute
names (so state-dict keys do not change) and runs

    x = attention_residual(x)      # over N tokens, with proportional attention
    x, state = reducer(x, state)   # N -> N' tokens (skipped when reducer is None)
    x = mlp_residual(x)            # over N' tokens

Families differ only in the two residual branches. Token state enters and leaves with
the hidden tensor (surgery/state.py `carry`: packed, or attached on the eager CPU path);
the first block creates it (and, when the model reduces tokens, moves padding behind the
real tokens of each sample) and the last block returns plain hidden states, so the model
around the blocks is unchanged.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, carry, key_mask_from_attention_mask, real_first, receive, reorder

if TYPE_CHECKING:  # reducers import surgery.attention; a runtime import here would be circular
    from tokcomp.reducers.base import Reducer



class TokenBlock(nn.Module):
    def __init__(self, hidden_size: int, index: int, num_blocks: int, padded: bool, protected: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.index = index
        self.num_blocks = num_blocks
        self.padded = padded  # the model takes an attention mask: tokens carry a real flag
        self.protected = protected  # leading tokens that no reducer removes (CLS, distillation, registers)
        self.reducer: Reducer | None = None
        self.proportional_attention = False
        # Set on the first block when any block reduces tokens: padding then moves to the end.
        self.compact_padding = False
        # Order-carrying models (time, causality): tokens go back to input order after a reduction.
        self.preserve_order = False
        # Visualisation / pooling switches, toggled by surgery.registry, not saved.
        self.trace_source = False
        self.capture_state = False
        self.captured_state: TokenState | None = None

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_blocks - 1

    @abstractmethod
    def attention_residual(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, AttentionInfo]:
        """x after the attention branch and its residual, plus the attention info."""

    @abstractmethod
    def mlp_residual(self, x: Tensor) -> Tensor:
        """x after the MLP branch and its residual."""

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args, **kwargs) -> Tensor:
        x, state = self._enter(hidden_states, attention_mask)
        x, info = self.attention_residual(x, state.attention_bias(self.proportional_attention, x.dtype))
        if self.reducer is not None:
            x, state = self.reducer(x, state, info)
            if self.preserve_order:
                from tokcomp.reducers.apply import in_input_order  # reducers import surgery: import late

                x, state = in_input_order(x, state)
        x = self.mlp_residual(x)
        return self._leave(x, state)

    def _enter(self, hidden_states: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, TokenState]:
        if not self.is_first:
            dtype = next(self.parameters()).dtype
            return receive(hidden_states, self.hidden_size, dtype, self.padded, self.trace_source)
        tokens = hidden_states.shape[1]
        real = None
        if self.padded:
            real = key_mask_from_attention_mask(attention_mask, tokens)
            if real is None:  # nothing padded: every token is real
                real = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        state = TokenState.initial(hidden_states, real, self.protected, self.trace_source)
        order = real_first(state) if self.compact_padding else None
        if order is None:
            return hidden_states, state
        return reorder(hidden_states, state, order)

    def _leave(self, x: Tensor, state: TokenState) -> Tensor:
        if not self.is_last:
            return carry(x, state)
        if self.capture_state:
            self.captured_state = state
        return x

    def extra_repr(self) -> str:
        return f"index={self.index}, proportional_attention={self.proportional_attention}"
