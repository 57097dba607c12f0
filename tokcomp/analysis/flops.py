"""FLOPs the way the token-reduction field counts them: multiply-accumulates (MACs).

DiffRate's per-block convention (reproduces its published GMACs to 3 decimals):
attention 4 N C^2 + 2 N^2 C with N tokens entering the block; MLP (2 C I per token,
8 C^2 for a 4x MLP) over the N' tokens left after the reduction; plus the patch
embedding and the head. Softmax, LayerNorm and the matching itself are not counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokcomp.errors import TokcompError
from tokcomp.surgery.adapters.base import Geometry


def block_macs(tokens_in: int, tokens_out: int, geometry: Geometry) -> int:
    c = geometry.hidden_size
    return 4 * tokens_in * c * c + 2 * tokens_in * tokens_in * c + tokens_out * geometry.mlp_macs_per_token


def model_macs(geometry: Geometry, tokens_per_layer: Sequence[int]) -> int:
    """Total MACs given the token count after every block."""
    if len(tokens_per_layer) != geometry.num_layers:
        raise ValueError(f"expected {geometry.num_layers} token counts, got {len(tokens_per_layer)}")
    total, tokens_in = geometry.embed_macs + geometry.head_macs, geometry.input_tokens
    for tokens_out in tokens_per_layer:
        total += block_macs(tokens_in, tokens_out, geometry)
        tokens_in = tokens_out
    return total


def per_layer_macs(geometry: Geometry, tokens_per_layer: Sequence[int]) -> list[int]:
    out, tokens_in = [], geometry.input_tokens
    for tokens_out in tokens_per_layer:
        out.append(block_macs(tokens_in, tokens_out, geometry))
        tokens_in = tokens_out
    return out


def gmacs(macs: int) -> float:
    return macs / 1e9


_ABSOLUTE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(g|gmacs|gflops)\s*$", re.IGNORECASE)
_RELATIVE = re.compile(r"^\s*-\s*([0-9]*\.?[0-9]+)\s*%\s*$")


def resolve_flops_target(target: float | str, original_macs: int) -> int:
    """A FLOPs target as MACs: a fraction of the original (0.62), a cut ("-38%") or GMACs ("2.9G")."""
    if isinstance(target, (int, float)):
        if not 0 < target <= 1:
            raise TokcompError(
                f"target_flops {target} is not a fraction in (0, 1]",
                hint='use a fraction of the original FLOPs (0.62), a cut ("-38%") or absolute GMACs ("2.9G")',
            )
        return round(original_macs * float(target))
    if match := _ABSOLUTE.match(target):
        return round(float(match.group(1)) * 1e9)
    if match := _RELATIVE.match(target):
        return round(original_macs * (1 - float(match.group(1)) / 100))
    raise TokcompError(
        f"target_flops '{target}' is not understood",
        hint='use a fraction of the original FLOPs (0.62), a cut ("-38%") or absolute GMACs ("2.9G")',
    )
