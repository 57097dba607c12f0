"""The token steps as the portable ONNX graph writes them: row gathers and a one-hot matmul.

Traced as they run on a GPU (reducers/ops.py), the steps become GatherElements and
ScatterElements, which read one index per element: the [B, K] token index is first
expanded to [B, K, C] (an Expand that writes it out), and ONNX Runtime's CPU kernels
walk it element by element. The portable flavour is what CPU runtimes load, so export
swaps in (reducers/ops.py `use_ops`) the same steps written for them:

- gather: rows of the flattened [B N, C] tensor, one ONNX Gather of whole rows;
- merge: the moved rows are added through a [B, K, R] one-hot of `dst`, one MatMul
  (R, the tokens a layer moves, is a small share of N: the matmul costs K R C MACs
  against the block's 12 N C^2).

The results equal the references' up to float rounding (the export's validation compares
them with PyTorch). In ONNX Runtime on CPU these run 2.7-3.7x faster than the traced
references (benchmarks/results/onnx_token_steps.md). GPU runs and torch.compile keep the
references: one gather or scatter_add kernel each, where these would add launches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """t [B, N, C], index [B, K] -> [B, K, C]: rows of the flattened tensor, one ONNX Gather (embedding's)."""
    batch, tokens, width = t.shape
    rows = index + torch.arange(batch, device=index.device)[:, None] * tokens
    return F.embedding(rows, t.reshape(-1, width))


def merge_by_matmul(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Keep rows `kept` [B, K] of t, then add rows `src` [B, R] into output rows `dst` [B, R] (< K)."""
    one_hot = torch.arange(kept.shape[1], device=dst.device)[None, :, None] == dst[:, None, :]
    return gather_rows(t, kept) + one_hot.to(t.dtype) @ gather_rows(t, src)


PORTABLE_OPS: Mapping[str, Callable[..., Tensor]] = {
    "gather_tokens": gather_rows,
    "index_merge_sum": merge_by_matmul,
}
