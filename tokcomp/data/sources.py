"""Where samples come from: the zoo's built-in data, image folders, text files, data sets.

    zoo:images        ImageNet samples (labeled) + scikit-image photos
    zoo:imagenet      the 20 labeled ImageNet images only
    zoo:cifar10       20 labeled CIFAR-10 images (32x32)
    zoo:cifar100      20 labeled CIFAR-100 images (32x32)
    zoo:skimage       scikit-image photos (unlabeled)
    zoo:A+B+...       several image groups, e.g. zoo:imagenet+cifar10+cifar100
    zoo:text[:lang]   chatterbot-corpus sentences (default English)
    zoo:photos        the evaluation split of the built-in photographs (about 250 real photos)
    zoo:photos-calib  their calibration split (disjoint from zoo:photos)
    zoo:prose[:lang]  held-out Debian Reference prose, evaluation split (en, de, es, fr, id, it, ja, pt, zh-cn)
    zoo:prose-calib[:lang]  its calibration split (disjoint from zoo:prose)
    <folder>          images, recursively; class sub-folders give labels (sorted order)
    <folder>          a Hugging Face data set written by save_to_disk (one split)
    <file>.parquet    or a folder of .parquet files: an image or text column, optional label
    <file>.txt        one text per line
    <file>.jsonl      one JSON object per line with a "text" field (and optional "label")

Labels are the data set's own class indices. Only the samples that are used are
decoded: the subset is chosen from the catalogue first.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError, first_line
from tokcomp.fileio import read_jsonl, read_text
from tokcomp.progress import info

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
ZOO_IMAGE_GROUPS = {
    "images": ("imagenet", "skimage"),
    "imagenet": ("imagenet",),
    "cifar10": ("cifar10",),
    "cifar100": ("cifar100",),
    "skimage": ("skimage",),
}
EVALUATION_SETS = {"photos": "eval", "photos-calib": "calib", "prose": "eval", "prose-calib": "calib"}  # id -> split
# The built-in data ids: id -> (modality, what it holds). `tokcomp zoo list` prints this table.
ZOO_DATA = {
    "zoo:photos": ("image", "evaluation split of the built-in real photographs (about 250; never calibrated on)"),
    "zoo:photos-calib": ("image", "calibration split of the built-in photographs (disjoint from zoo:photos)"),
    "zoo:images": ("image", "20 labeled ImageNet photos + 16 scikit-image photos"),
    "zoo:imagenet": ("image", "the 20 labeled ImageNet photos"),
    "zoo:cifar10": ("image", "20 labeled CIFAR-10 images (32x32)"),
    "zoo:cifar100": ("image", "20 labeled CIFAR-100 images (32x32)"),
    "zoo:skimage": ("image", "16 scikit-image photos (unlabeled); groups combine with +, e.g. zoo:imagenet+cifar10"),
    "zoo:prose[:lang]": ("text", "evaluation split of Debian Reference prose (en, de, es, fr, id, it, ja, pt, zh-cn)"),
    "zoo:prose-calib[:lang]": ("text", "calibration split of that prose (disjoint from zoo:prose)"),
    "zoo:text[:lang]": ("text", "chatterbot-corpus dialogue sentences (default english)"),
}
DATA_HINT = (
    f"use {', '.join(ZOO_DATA)} (see `tokcomp zoo list`), "
    "an image folder, a save_to_disk data set folder, .parquet files, or a .txt/.jsonl file"
)


@dataclass(frozen=True)
class Sample:
    value: Any  # PIL image or text
    label: int | None = None
    name: str = ""


# A catalogue entry decodes one sample on demand.
Loader = Callable[[], Sample]


def default_data(modality: str) -> str:
    return "zoo:images" if modality == "image" else "zoo:text"


def load_samples(
    data: str | None, modality: str, limit: int | None = None, seed: int = 0, augment: bool = False
) -> list[Sample]:
    """Up to `limit` samples; a random subset (seeded) when the source holds more.

    With `augment` (images only), exactly `limit` random resized crops / flips are drawn
    from the source's images, so a tiny set can feed a larger calibration run.
    """
    data = data or default_data(modality)
    catalogue = catalogue_of(data)
    if augment:
        return _augmented(data, catalogue, modality, limit, seed)
    if limit is not None and len(catalogue) > limit:
        catalogue = [catalogue[i] for i in random.Random(seed).sample(range(len(catalogue)), limit)]
    elif limit is not None and len(catalogue) < limit:
        info(f"[yellow]data '{data}' has {len(catalogue)} samples; {limit} were asked for, using all {len(catalogue)}")
    samples = [load() for load in catalogue]
    _check_modality(data, samples[0], modality)
    return samples


def catalogue_of(data: str) -> list[Loader]:
    """Every sample of a source, not yet decoded."""
    if data.startswith("zoo:"):
        catalogue = _zoo(data)
    else:
        catalogue = _path(Path(data))
    if not catalogue:
        raise TokcompError(f"data '{data}' holds no samples", hint=DATA_HINT)
    return catalogue


def _check_modality(data: str, sample: Sample, modality: str) -> None:
    kind = "image" if hasattr(sample.value, "convert") else "text"
    if kind != modality:
        raise TokcompError(f"data '{data}' holds {kind} samples but the model takes {modality}", hint=DATA_HINT)


def _augmented(data: str, catalogue: list[Loader], modality: str, limit: int | None, seed: int) -> list[Sample]:
    from tokcomp.data.augment import augmented_views

    if limit is None:
        raise ValueError("augmentation needs a sample count")
    originals = [load() for load in catalogue]
    if modality != "image" or not hasattr(originals[0].value, "convert"):
        raise TokcompError(
            f"augment: true applies to image data only; data '{data}' is not images for this {modality} model",
            hint="set augment: false for text data",
        )
    return augmented_views(originals, limit, seed)


def _zoo(data: str) -> list[Loader]:
    from tokcomp import zoo

    name, _, arg = data[len("zoo:") :].partition(":")
    if name == "text":
        return [_ready(Sample(t, name=f"text{i}")) for i, t in enumerate(zoo.sample_texts(arg or "english"))]
    if name in EVALUATION_SETS and (name.startswith("prose") or not arg):
        return _evaluation_set(name, arg)
    parts = name.split("+")
    unknown = [p for p in parts if p not in ZOO_IMAGE_GROUPS]
    if unknown or arg:
        raise TokcompError(f"unknown built-in data '{data}'", hint=DATA_HINT)
    groups = list(dict.fromkeys(g for p in parts for g in ZOO_IMAGE_GROUPS[p]))  # ordered, no repeats
    return [_ready(Sample(item.image, item.label, item.name)) for group in groups for item in zoo.sample_images(group)]


def _evaluation_set(name: str, language: str) -> list[Loader]:
    from tokcomp.zoo import eval_sets

    split = EVALUATION_SETS[name]
    if name.startswith("prose"):
        texts = eval_sets.evaluation_texts(language or "en", split)
        return [_ready(Sample(t, name=f"{name}:{language or 'en'}:{i}")) for i, t in enumerate(texts)]
    return [_photo(entry) for entry in eval_sets.photo_entries(split)]


def _photo(entry) -> Loader:
    def load() -> Sample:
        from tokcomp.zoo.eval_sets import load_photo

        photo = load_photo(entry)
        return Sample(photo.image, photo.label, photo.name)

    return load


def _ready(sample: Sample) -> Loader:
    return lambda: sample


def _path(path: Path) -> list[Loader]:
    from tokcomp.data import hf_data

    if path.is_dir() and hf_data.is_saved_dataset(path):
        return hf_data.saved_dataset(path)
    if path.is_dir() and hf_data.parquet_files(path) and not _image_files(path):
        return hf_data.parquet(hf_data.parquet_files(path))
    if path.is_dir():
        return _image_folder(path)
    if path.suffix == ".parquet" and path.is_file():
        return hf_data.parquet([path])
    if path.suffix == ".txt" and path.is_file():
        return [_ready(Sample(line.strip())) for line in read_text(path).splitlines() if line.strip()]
    if path.suffix == ".jsonl" and path.is_file():
        return _jsonl(path)
    if not path.exists():
        raise TokcompError(f"data '{path}' not found", hint=DATA_HINT)
    raise TokcompError(f"data '{path}' is not a kind tokcomp reads", hint=DATA_HINT)


def _jsonl(path: Path) -> list[Loader]:
    loaders = []
    for number, record in read_jsonl(path):
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str):
            raise TokcompError(
                f'{path}:{number}: the JSON object has no "text" field with a string value', hint='write {"text": ...}'
            )
        if label is not None and (not isinstance(label, int) or isinstance(label, bool) or label < 0):
            raise TokcompError(f'{path}:{number}: "label" {label!r} is not a class index', hint='write "label": 0, 1')
        loaders.append(_ready(Sample(text, label, f"{path.name}:{number}")))
    return loaders


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_folder(root: Path) -> list[Loader]:
    files = _image_files(root)
    if not files:
        raise TokcompError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}", hint=DATA_HINT)
    classes = sorted({p.parent.name for p in files if p.parent != root})
    label_of = {name: i for i, name in enumerate(classes)}
    return [_image_file(p, label_of.get(p.parent.name), str(p.relative_to(root))) for p in files]


def _image_file(path: Path, label: int | None, name: str) -> Loader:
    def load() -> Sample:
        from PIL import Image

        try:
            with Image.open(path) as image:
                return Sample(image.convert("RGB"), label, name)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # what PIL raises on bad files
            raise TokcompError(
                f"{path}: not a readable image ({first_line(exc)})",
                hint="replace the file, or move it out of the data folder",
            ) from None

    return load
