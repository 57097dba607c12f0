"""Turn samples into model inputs with the model's own preprocessing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tokcomp.data.sources import Sample
from tokcomp.errors import TokcompError


def make_batches(
    samples: Sequence[Sample], processor, modality: str, batch_size: int, sequence_length: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    if processor is None:
        raise TokcompError(
            "the model folder has no image processor / tokenizer to preprocess data",
            hint="add preprocessor_config.json or tokenizer files to the model folder",
        )
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        values = [s.value for s in chunk]
        if modality == "image":
            batch = dict(processor(images=values, return_tensors="pt"))
        else:
            batch = dict(
                processor(
                    values, padding=True, truncation=True, max_length=sequence_length or 128, return_tensors="pt"
                )
            )
        yield batch
