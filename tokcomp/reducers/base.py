"""The reducer interface.

A reducer runs inside a rewritten block, between the attention residual and the MLP,
and maps N tokens to N' tokens. Every reducer can be written X' = T X (see
docs/ARCHITECTURE.md); they differ in how T is built. Reducers are nn.Modules
configured by plain integers and floats, so a checkpoint records them in JSON and
rebuilds them exactly. The one exception that holds parameters, ToMe's learned merge cost
(reducers/merge_cost.py), is a submodule of known shape: its pass records the shape and
rebuilds it empty, and the checkpoint's weights fill it.

Contract:
- A budget is a `Rate` (reducers/rate.py): the share of each sample's own reducible
  tokens (real, not protected) that the layer removes, capped by `limit` (bipartite
  merging can move at most half). `removal(reducible)` is that count, for an int or
  for a [B] tensor of per-sample counts.
- `kept_tokens(n)` is the token count after the layer for a sample of n tokens (shapes,
  FLOPs and metadata use it: no forward pass needed). For a padded batch it is also the
  output length: the longest sample's own count.
- `overhead_macs(n)` is what choosing the tokens costs, where a FLOPs budget must own it:
  0, as the field counts (similarity, sorting and matching are left out), except for a
  learned model a reducer runs (ToMe's learned merge cost), which is counted.
- `forward(x, state, attn) -> (x', state')`: x [B, N, C]; state carries sizes, flags and
  positions (surgery/state.py); attn gives keys and attention rows (surgery/attention.py).
  Tokens are chosen per sample and applied with reducers/apply.py. A reducer runs even
  where it removes nothing at this length: how it arranges a sample's tokens must not
  depend on the batch the sample is in (a short sentence padded into a long batch and
  the same sentence alone give the same tokens in the same order).
- Only export-safe ops: gather, scatter_add, argsort/topk, matmul, where; in-place writes
  only into tensors the reducer itself just made (never its inputs), no data-dependent shapes,
  no .item(), so a reduced model is one graph under torch.compile and exports to ONNX.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn

from tokcomp.reducers.rate import Count, Rate, at_most
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, reducible_tokens


class Reducer(nn.Module, ABC):
    #: stable name used in checkpoint metadata
    kind: str = ""
    #: ranks tokens by the CLS token's attention (AttentionInfo.cls_attention): needs a CLS token
    uses_cls_attention: bool = False

    def __init__(self, rate: Rate, protected: int):
        super().__init__()
        self.rate = rate
        # Tokens of every sample that are never removed or merged (CLS, distillation, registers).
        self.protected = protected

    @staticmethod
    def limit(reducible: Count) -> Count:
        """The most a layer may remove of `reducible` tokens: half of them (ToMe's cap)."""
        return reducible // 2

    def removal(self, reducible: Count) -> Count:
        return at_most(self.rate.of(reducible), self.limit(reducible))

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - self.removal(tokens_in - self.protected)

    def overhead_macs(self, tokens_in: int) -> int:
        """MACs the reducer spends choosing tokens on `tokens_in` tokens that a budget counts (see above)."""
        return 0

    def per_sample_removal(self, state: TokenState, tokens: int) -> Count:
        """Tokens each sample removes: an int when no sample is padded, else [B]."""
        return self.removal(reducible_tokens(state, self.protected, tokens))

    @abstractmethod
    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings of this reducer (for inspect and metadata)."""
        return {"kind": self.kind, "rate": self.rate.to_json(), "protected": self.protected}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "kind")
