"""Calibration batches for the search: the recipe's data (this rank's share) or a forward_loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from tokcomp.calibrate import distributed
from tokcomp.calibrate.forward_loop import record_batches
from tokcomp.data import load_samples, make_batches
from tokcomp.errors import TokcompError
from tokcomp.surgery.adapters.base import InputSpec

if TYPE_CHECKING:  # tokcomp.recipe imports every pass, and the DiffRate pass imports this module
    from tokcomp.recipe import CalibrationSpec


def calibration_batches(
    spec: CalibrationSpec, model: nn.Module, processor, input_spec: InputSpec, seed: int, labels: bool
) -> tuple[list[dict[str, Tensor]], int]:
    """(this rank's batches, samples used on all ranks together)."""
    if spec.forward_loop is not None:
        batches = record_batches(spec.forward_loop, model, input_spec.modality)
        batches = batches[: distributed.min_across_ranks(len(batches))]
        if labels and any("labels" not in b for b in batches):
            raise TokcompError("loss 'ce' needs a 'labels' entry in every batch the forward_loop feeds")
        used = sum(len(next(iter(b.values()))) for b in batches)
        return batches, int(distributed.mean_across_ranks(used) * distributed.world_size())
    samples = load_samples(spec.data, input_spec.modality, spec.samples, seed, augment=spec.augment)
    mine = distributed.shard(samples)
    if not mine:
        raise TokcompError(
            f"calibration has {len(samples)} samples for {distributed.world_size()} processes",
            hint="raise calibration.samples to at least the number of processes",
        )
    # Text is padded to the reference length: token counts are positions at that length.
    batches = make_batches(
        mine,
        processor,
        input_spec.modality,
        spec.batch_size,
        input_spec.sequence_length,
        labels=labels,
        pad_to_length=True,
    )
    return list(batches), len(mine) * distributed.world_size()
