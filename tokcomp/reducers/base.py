"""The reducer interface.

A reducer runs inside a rewritten block, between the attention residual and the MLP,
and maps N tokens to N' tokens. Every reducer can be written X' = T X (see
docs/ARCHITECTURE.md); they differ in how T is built. Reducers are parameter-free
nn.Modules configured by plain integers and floats, so a checkpoint records them in
JSON and rebuilds them exactly.

Contract:
- `forward(x, state, attn) -> (x', state')` with x [B, N, C]; state carries sizes,
  padding mask and optional source map (surgery/state.py); attn gives keys and CLS
  attention (surgery/attention.py).
- `kept_tokens(n)` is the static token count after this reducer for n tokens in: the
  FLOPs counter and checkpoint metadata use it, so shapes are known without running.
- Only export-safe ops: gather, scatter_add, topk/argsort, matmul, where; no in-place
  writes and no scatter_reduce("mean").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn

from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState


class Reducer(nn.Module, ABC):
    #: stable name used in checkpoint metadata
    kind: str = ""

    def __init__(self, protected: int):
        super().__init__()
        # Leading tokens (CLS, distillation) that are never removed or merged away.
        self.protected = protected

    @abstractmethod
    def kept_tokens(self, tokens_in: int) -> int: ...

    @abstractmethod
    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings of this reducer (for inspect and metadata)."""
        return {"kind": self.kind, "protected": self.protected}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "kind")
