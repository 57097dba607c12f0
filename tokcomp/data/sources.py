"""Where samples come from: the zoo's built-in data, an image folder, or a text file.

    zoo:images        ImageNet samples (labeled) + scikit-image photos
    zoo:imagenet      the 20 labeled ImageNet images only
    zoo:skimage       scikit-image photos
    zoo:text[:lang]   chatterbot-corpus sentences (default English)
    <folder>          images, recursively; class sub-folders give labels
    <file>.txt        one text per line
    <file>.jsonl      one JSON object per line with a "text" field
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError
from tokcomp.progress import info

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DATA_HINT = "use zoo:images, zoo:imagenet, zoo:skimage, zoo:text[:language], an image folder, or a .txt/.jsonl file"


@dataclass(frozen=True)
class Sample:
    value: Any  # PIL image or text
    label: int | None = None
    name: str = ""


def default_data(modality: str) -> str:
    return "zoo:images" if modality == "image" else "zoo:text"


def load_samples(data: str | None, modality: str, limit: int | None = None, seed: int = 0) -> list[Sample]:
    """Up to `limit` samples; a random subset (seeded) when the source holds more."""
    data = data or default_data(modality)
    samples = _zoo(data) if data.startswith("zoo:") else _path(Path(data))
    kind = "image" if hasattr(samples[0].value, "convert") else "text"
    if kind != modality:
        raise TokcompError(f"data '{data}' holds {kind} samples but the model takes {modality}", hint=DATA_HINT)
    if limit is not None and len(samples) > limit:
        samples = random.Random(seed).sample(samples, limit)
    elif limit is not None and len(samples) < limit:
        info(f"[yellow]data '{data}' has {len(samples)} samples; {limit} were asked for, using all {len(samples)}")
    return samples


def _zoo(data: str) -> list[Sample]:
    from tokcomp import zoo

    name, _, arg = data[len("zoo:") :].partition(":")
    if name == "text":
        return [Sample(t, name=f"text{i}") for i, t in enumerate(zoo.sample_texts(arg or "english"))]
    groups = {"images": ["imagenet", "skimage"], "imagenet": ["imagenet"], "skimage": ["skimage"]}
    if name not in groups:
        raise TokcompError(f"unknown built-in data '{data}'", hint=DATA_HINT)
    return [
        Sample(item.image, item.label, item.name) for group in groups[name] for item in zoo.sample_images(group)
    ]


def _path(path: Path) -> list[Sample]:
    if path.is_dir():
        return _image_folder(path)
    if path.suffix == ".txt" and path.is_file():
        return [Sample(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl" and path.is_file():
        return [Sample(json.loads(line)["text"]) for line in path.read_text().splitlines() if line.strip()]
    raise TokcompError(f"data '{path}' not found or not a supported kind", hint=DATA_HINT)


def _image_folder(root: Path) -> list[Sample]:
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TokcompError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}", hint=DATA_HINT)
    classes = sorted({p.parent.name for p in files if p.parent != root})
    label_of = {name: i for i, name in enumerate(classes)}
    return [
        Sample(Image.open(p).convert("RGB"), label_of.get(p.parent.name), str(p.relative_to(root))) for p in files
    ]
