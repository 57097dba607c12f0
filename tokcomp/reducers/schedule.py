"""Per-layer merge schedules for ToMe: constant r, an explicit list, or (r, inflect)."""

from __future__ import annotations

from collections.abc import Sequence


def inflect_schedule(r: int, inflect: float, num_layers: int) -> list[int]:
    """ToMe's (r, inflect) schedule: a line from `max` down to `min` with mean about r.

    min = int(r (1 - inflect)), max = 2r - min, r_i = int(min + i (max - min) / (L - 1)).
    (16, -1) gives the "decreasing" schedule 32 -> 0.
    """
    low = int(r * (1 - inflect))
    high = 2 * r - low
    if num_layers == 1:
        return [low]
    return [int(low + i * (high - low) / (num_layers - 1)) for i in range(num_layers)]


def tokens_after_layers(tokens_in: int, reducers: Sequence) -> list[int]:
    """Token count after every layer, given per-layer reducers (None = no reduction)."""
    counts, n = [], tokens_in
    for reducer in reducers:
        if reducer is not None:
            n = reducer.kept_tokens(n)
        counts.append(n)
    return counts
