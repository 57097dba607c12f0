"""Turn samples into model inputs with the model's own preprocessing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tokcomp.data.sources import Sample
from tokcomp.errors import TokcompError


def make_batches(
    samples: Sequence[Sample],
    processor,
    modality: str,
    batch_size: int,
    sequence_length: int | None = None,
    *,
    labels: bool = False,
    pad_to_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of processor outputs.

    `labels=True` adds a "labels" tensor (every sample must have one); `pad_to_length`
    pads text to `sequence_length` instead of the longest text in the batch, so token
    positions match the reference input the token counts refer to.
    """
    if processor is None:
        raise TokcompError(
            "the model folder has no image processor / tokenizer to preprocess data",
            hint="add preprocessor_config.json or tokenizer files to the model folder",
        )
    if labels and any(s.label is None for s in samples):
        unlabeled = next(s for s in samples if s.label is None)
        raise TokcompError(
            f"sample '{unlabeled.name}' has no label, but labels were asked for",
            hint="use labeled data (class sub-folders, a label column) or a loss that needs no labels",
        )
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        values = [s.value for s in chunk]
        if modality == "image":
            batch = dict(processor(images=values, return_tensors="pt"))
        else:
            batch = dict(
                processor(
                    values,
                    padding="max_length" if pad_to_length else True,
                    truncation=True,
                    max_length=sequence_length or 128,
                    return_tensors="pt",
                )
            )
        if labels:
            batch["labels"] = torch.tensor([s.label for s in chunk], dtype=torch.long)
        yield batch
