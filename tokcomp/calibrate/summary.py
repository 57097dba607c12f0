"""The learned schedule as a table: kept counts and GMACs per layer."""

from __future__ import annotations

import os

from rich.table import Table

from tokcomp.analysis.flops import per_layer_macs
from tokcomp.calibrate import distributed
from tokcomp.progress import console
from tokcomp.surgery.adapters.base import Geometry


def schedule_table(geometry: Geometry, prune_kept: list[int], merge_kept: list[int]) -> Table:
    tokens, before = [], geometry.input_tokens
    for prune, merge in zip(prune_kept, merge_kept, strict=True):
        before = min(before, prune, merge)
        tokens.append(before)
    dense = per_layer_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    table = Table(
        "layer",
        "tokens in",
        "prune kept",
        "merge kept",
        "tokens out",
        "GMACs",
        "of original",
        title="DiffRate schedule",
    )
    tokens_in = geometry.input_tokens
    for layer, (macs, prune, merge, out) in enumerate(
        zip(per_layer_macs(geometry, tokens), prune_kept, merge_kept, tokens, strict=True)
    ):
        table.add_row(
            str(layer),
            str(tokens_in),
            str(prune),
            str(merge),
            str(out),
            f"{macs / 1e9:.4f}",
            f"{macs / dense[layer]:.0%}",
        )
        tokens_in = out
    return table


def print_schedule(geometry: Geometry, prune_kept: list[int], merge_kept: list[int]) -> None:
    if os.environ.get("TOKCOMP_QUIET") == "1" or not distributed.is_main_process():
        return
    console.print(schedule_table(geometry, prune_kept, merge_kept))
