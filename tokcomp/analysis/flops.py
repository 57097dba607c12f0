"""FLOPs the way the token-reduction field counts them: multiply-accumulates (MACs).

DiffRate's per-block convention (reproduces its published GMACs to 3 decimals):
attention 4 N C^2 + 2 N^2 C with N tokens entering the block; MLP (2 C I per token,
8 C^2 for a 4x MLP) over the N' tokens left after the reduction; plus the patch
embedding and the head. Softmax, LayerNorm and the matching itself are not counted; a learned
model a reducer runs to choose tokens (ToMe's learned merge cost) is, when the reducers are given
(`Reducer.overhead_macs`): a budget then owns everything the checkpoint adds.
Decoders (prefill): their own q/k/v/o projection sizes (grouped-query heads), and
2 x (visible query-key pairs) x H d for attention: causal, within each layer's window.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokcomp.errors import TokcompError
from tokcomp.surgery.adapters.base import Geometry


def block_macs(tokens_in: int, tokens_out: int, geometry: Geometry, layer: int = 0) -> int:
    c = geometry.hidden_size
    projections = geometry.attention_macs_per_token or 4 * c * c
    width = geometry.attention_width or c
    window = geometry.windows[layer] if geometry.windows else None
    pairs = visible_pairs(tokens_in, window) if geometry.causal else tokens_in * tokens_in
    return tokens_in * projections + 2 * pairs * width + tokens_out * geometry.mlp_macs_per_token


def visible_pairs(tokens: int, window: int | None) -> int:
    """Query-key pairs of causal attention over `tokens` consecutive tokens, within a sliding `window`.

    For kept tokens spread over a longer prompt a window holds fewer of them: an upper bound there.
    """
    if window is None or window >= tokens:
        return tokens * (tokens + 1) // 2
    return window * (window + 1) // 2 + (tokens - window) * window


def model_macs(geometry: Geometry, tokens_per_layer: Sequence[int], reducers: Sequence | None = None) -> int:
    """Total MACs given the token count after every block (and, with `reducers`, their overhead)."""
    if len(tokens_per_layer) != geometry.num_layers:
        raise ValueError(f"expected {geometry.num_layers} token counts, got {len(tokens_per_layer)}")
    return geometry.embed_macs + geometry.head_macs + sum(per_layer_macs(geometry, tokens_per_layer, reducers))


def per_layer_macs(geometry: Geometry, tokens_per_layer: Sequence[int], reducers: Sequence | None = None) -> list[int]:
    """MACs of every block; a block's reducer (None: none) adds its `overhead_macs` at the block's input count."""
    out, tokens_in = [], geometry.input_tokens
    reducers = reducers if reducers is not None else [None] * len(tokens_per_layer)
    for layer, (tokens_out, reducer) in enumerate(zip(tokens_per_layer, reducers, strict=True)):
        overhead = 0 if reducer is None else reducer.overhead_macs(tokens_in)
        out.append(block_macs(tokens_in, tokens_out, geometry, layer) + overhead)
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
