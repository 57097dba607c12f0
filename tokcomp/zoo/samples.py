"""Built-in sample data: real images and sentences from PyPI carrier packages.

Files are extracted once into `cache_dir()/data/<package>-<version>/`; the packages
themselves are never installed or imported.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

from tokcomp.errors import ZooError
from tokcomp.fileio import atomic_directory, cache_dir
from tokcomp.zoo.wheels import copy_package_files

# (package, pinned version, folder inside the package)
FOOLBOX = ("foolbox", "3.3.4", "foolbox/data/")
SCIKIT_IMAGE = ("scikit-image", "0.26.0", "skimage/data/")
CHATTERBOT = ("chatterbot-corpus", "1.3.3", "chatterbot_corpus/data/")

IMAGE_SOURCES = ("imagenet", "cifar10", "cifar100", "skimage", "all")
# scikit-image's photographs (grayscale ones are converted to RGB). Left out: drawings, synthetic
# patterns, documents, tiny crops, and motorcycle_right (the stereo twin of motorcycle_left).
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg",
)  # fmt: skip
MIN_TEXT_CHARS = 3
# The same safe subset as yaml.safe_load, about 10x faster when libyaml is available.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class SampleImage:
    name: str  # file stem, e.g. "imagenet_00_243" or "astronaut"
    image: Image.Image  # RGB
    label: int | None  # class index in `dataset`, None for unlabeled photos
    dataset: str  # "imagenet", "cifar10", "cifar100" or "skimage"


def sample_images(source: str = "imagenet") -> list[SampleImage]:
    """Sample images, sorted by name: 20 labeled images of "imagenet" (512x512, one 1024x683), "cifar10" or
    "cifar100" (32x32); "skimage" photos (unlabeled); or "all" (imagenet then skimage)."""
    if source == "all":
        return sample_images("imagenet") + sample_images("skimage")
    if source == "skimage":
        folder = _data_folder(*SCIKIT_IMAGE, names=SKIMAGE_PHOTOS)
        return [SampleImage(Path(f).stem, _load_rgb(folder / f), None, "skimage") for f in sorted(SKIMAGE_PHOTOS)]
    if source in IMAGE_SOURCES:
        # foolbox names files <dataset>_<index>_<label>.<ext>, e.g. imagenet_00_243.jpg
        folder = _data_folder(*FOOLBOX)
        files = sorted(folder.glob(f"{source}_*"))
        return [SampleImage(f.stem, _load_rgb(f), int(f.stem.rsplit("_", 1)[1]), source) for f in files]
    raise ZooError(f"unknown sample image source {source!r}; valid sources: {', '.join(IMAGE_SOURCES)}")


def text_languages() -> list[str]:
    """Languages `sample_texts` knows, sorted."""
    return sorted(p.name for p in _data_folder(*CHATTERBOT).iterdir() if p.is_dir())


def sample_texts(language: str = "english") -> list[str]:
    """Dialogue sentences of chatterbot-corpus in `language`: stripped, deduplicated (first occurrence
    kept), at least MIN_TEXT_CHARS long, in file order (files sorted by name)."""
    languages = text_languages()
    if language not in languages:
        raise ZooError(
            f"no sample texts for language {language!r}; available: {', '.join(languages)}",
            hint="language names are lowercase English words, e.g. english, german",
        )
    texts: dict[str, None] = {}  # an insertion-ordered set
    for path in sorted((_data_folder(*CHATTERBOT) / language).glob("*.yml")):
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) or {}
        for conversation in document.get("conversations", []):
            # A conversation is a list of lines; a few files have a bare string instead.
            lines = [conversation] if isinstance(conversation, str) else conversation
            for line in lines:
                if isinstance(line, str) and len(line.strip()) >= MIN_TEXT_CHARS:
                    texts.setdefault(line.strip())
    return list(texts)


def _data_folder(package: str, version: str, prefix: str, names: Collection[str] | None = None) -> Path:
    """The package's files under `prefix`, extracted into the cache on first use."""
    folder = cache_dir() / "data" / f"{package}-{version}"
    complete = folder.is_dir() and all((folder / name).is_file() for name in names or ())
    if not complete:
        # force=True: a folder missing some of `names` came from an older file list; replace it.
        with atomic_directory(folder, force=True) as tmp:
            copy_package_files(package, version, prefix, tmp, names)
    return folder


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
