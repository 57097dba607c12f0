"""Turn a data set's labels into the classifier's class indices.

The zoo's ImageNet samples already carry ImageNet-1k indices. An image folder's
labels are its class sub-folders, which `load_samples` numbers in sorted order; that
only matches the classifier when the folders are named in the classifier's own terms.
So folder names are matched, in this order, against the model's label names (or
their comma-separated aliases, as in "tench, Tinca tinca"), then read as class
indices, and only then left in sorted order (right for a full ImageNet folder of
synset ids, whose sorted order is the class order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from tokcomp.data import Sample

UNLABELED = -1


@dataclass(frozen=True)
class Targets:
    values: list[int]  # one class index per sample, UNLABELED where there is none
    how: str  # how labels were matched to classes, for the result JSON

    @property
    def labeled(self) -> int:
        return sum(v != UNLABELED for v in self.values)


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _name_index(id2label: Mapping) -> dict[str, int]:
    index: dict[str, int] = {}
    for class_id, label in id2label.items():
        for alias in [str(label), *str(label).split(",")]:
            index.setdefault(_norm(alias), int(class_id))
    return index


def _folder(sample: Sample) -> str | None:
    parts = PurePath(sample.name).parts
    return parts[0] if len(parts) > 1 else None


def classifier_targets(samples: Sequence[Sample], data: str, id2label: Mapping | None) -> Targets:
    labels = [UNLABELED if s.label is None else int(s.label) for s in samples]
    folders = {_folder(s) for s in samples if s.label is not None}
    if data.startswith("zoo:") or None in folders or not folders:
        return Targets(labels, "the data set's own class indices")
    by_name = _name_index(id2label or {})
    if all(_norm(f) in by_name for f in folders):
        values = [UNLABELED if s.label is None else by_name[_norm(_folder(s))] for s in samples]
        return Targets(values, "class folders matched to the model's label names")
    if all(f.isdigit() for f in folders):
        values = [UNLABELED if s.label is None else int(_folder(s)) for s in samples]
        return Targets(values, "class folders read as class indices")
    return Targets(labels, "class folders in sorted order (their names are not the model's labels)")
