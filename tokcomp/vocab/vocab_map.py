"""The old -> new token id map saved with a trimmed checkpoint (vocab_map.safetensors).

One int64 tensor `old_ids`: new id i was old id old_ids[i]. The inverse (old -> new,
-1 for dropped ids) follows from it; both are what a user needs to move token ids,
labels or logits between the original and the trimmed model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tokcomp.errors import CheckpointError

FILE = "vocab_map.safetensors"
FORMAT = "tokcomp-vocab-map"


@dataclass(frozen=True)
class VocabMap:
    old_ids: np.ndarray  # new id -> old id
    old_size: int  # ids of the original tokenizer

    @property
    def old_to_new(self) -> np.ndarray:
        table = np.full(self.old_size, -1, dtype=np.int64)
        table[self.old_ids] = np.arange(len(self.old_ids), dtype=np.int64)
        return table


def save_vocab_map(folder: Path, old_ids: np.ndarray, old_size: int) -> None:
    save_file(
        {"old_ids": torch.from_numpy(np.ascontiguousarray(old_ids, dtype=np.int64))},
        str(Path(folder) / FILE),
        metadata={"format": FORMAT, "old_size": str(old_size)},
    )


def load_vocab_map(folder: str | Path) -> VocabMap:
    path = Path(folder) / FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", hint="only checkpoints written by the vocab_trim pass have one")
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a tokcomp vocabulary map")
        old_ids = fh.get_tensor("old_ids").numpy()
    return VocabMap(old_ids, int(metadata["old_size"]))
