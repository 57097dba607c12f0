"""Straight-through estimators: a hard value forward, a chosen gradient backward."""

from __future__ import annotations

import torch
from torch import Tensor


def ceil_ste(x: Tensor) -> Tensor:
    """ceil(x) forward, exactly; gradient 1 backward (kept counts are integers, their expectation is not)."""
    return torch.ceil(x).detach() + (x - x.detach())


def hard_with_soft_gradient(hard: Tensor, soft: Tensor) -> Tensor:
    """`hard` forward; the gradient of `soft` backward (DiffRate's survival mask)."""
    return hard + (soft - soft.detach())


class _StraightThroughMin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        return torch.minimum(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, grad


def min_ste(a: Tensor, b: Tensor) -> Tensor:
    """min(a, b) forward; the full gradient to both a and b backward.

    The token count after a block is min(P, M): with an ordinary min only the smaller
    count would feel the FLOPs penalty and the other would drift to "keep everything".
    """
    return _StraightThroughMin.apply(a, b)


def cap(x: Tensor, limit: Tensor) -> Tensor:
    """min(x, limit) forward; the gradient to x only (a limit set elsewhere is not pushed)."""
    return x + (torch.minimum(x, limit) - x).detach()
