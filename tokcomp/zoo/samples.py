"""Built-in sample data: real images and sentences from PyPI carrier packages.

Files are extracted once into `cache_dir()/data/<package>-<version>/`; the packages
themselves are never installed or imported.
"""

from __future__ import annotations

import re
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
        # In tokcomp's cache (marker=None): a folder missing some of `names` came from an older file list.
        with atomic_directory(folder, force=True, marker=None) as tmp:
            copy_package_files(package, version, prefix, tmp, names)
    return folder


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# --- multilingual text for vocabulary trimming ----------------------------------------------

WORDFREQ = ("wordfreq", "3.1.1", "wordfreq/data/")
# ISO 639-1 code -> chatterbot-corpus folder name.
CHATTERBOT_LANGUAGES = {
    "bn": "bengali", "zh": "chinese", "nl": "dutch", "en": "english", "fr": "french", "de": "german",
    "he": "hebrew", "hi": "hindi", "id": "indonesian", "it": "italian", "ja": "japanese", "ko": "korean",
    "mr": "marathi", "or": "oriya", "fa": "persian", "pt": "portuguese", "ru": "russian", "es": "spanish",
    "sv": "swedish", "ta": "tamil", "te": "telugu", "th": "thai", "zh-hant": "traditionalchinese",
    "tr": "turkish", "uk": "ukrainian", "ur": "urdu", "yo": "yoruba",
}  # fmt: skip
# Multi-digit numbers are stored with every digit replaced by 0 ("0000" stands for any year).
_SMASHED_NUMBER = re.compile(r"\d")
# Python's reference documentation (pydoc_data) separates paragraphs with blank lines, indents code
# and grammar blocks, and underlines headings.
_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def wordfreq_languages() -> list[str]:
    """Language codes that `word_frequencies` knows (wordfreq's own codes), sorted."""
    names = (p.name.split(".")[0] for p in _data_folder(*WORDFREQ).glob("*_*.msgpack.gz"))
    return sorted({name.split("_", 1)[1] for name in names if name.split("_", 1)[0] in ("large", "small")})


def word_frequencies(language: str, limit: int | None = None) -> list[tuple[str, float]]:
    """wordfreq's (word, frequency) list for `language`, most frequent first, at most `limit` words.

    Frequencies are shares of running text (they sum to about 1). The "large" list is used
    when the language has one. Words containing digits are left out: wordfreq stores numbers
    with every digit replaced by 0, which is not text a tokenizer ever sees. Unlike wordfreq
    itself, an unknown language is an error, never a silent switch to English.
    """
    import gzip

    import msgpack

    folder = _data_folder(*WORDFREQ)
    path = next((p for p in (folder / f"{s}_{language}.msgpack.gz" for s in ("large", "small")) if p.is_file()), None)
    if path is None:
        raise ZooError(
            f"wordfreq has no word list for language {language!r}",
            hint=f"available: {', '.join(wordfreq_languages())}",
        )
    with gzip.open(path, "rb") as fh:
        packed = msgpack.unpackb(fh.read(), raw=False)
    header, buckets = packed[0], packed[1:]
    if not isinstance(header, dict) or header.get("format") != "cB":
        raise ZooError(f"{path.name} is not a wordfreq cB file", hint="the wordfreq package layout changed")
    words: list[tuple[str, float]] = []
    # Bucket i holds the words whose frequency rounds to i centibels below 1: 10 ** (-i / 100).
    for index, bucket in enumerate(buckets):
        frequency = 10 ** (-index / 100)
        for word in bucket:
            if not _SMASHED_NUMBER.search(word):
                words.append((word, frequency))
                if limit is not None and len(words) >= limit:
                    return words
    return words


def chatterbot_texts(language: str) -> list[str]:
    """`sample_texts` by ISO 639-1 code ("de") instead of chatterbot's folder name ("german")."""
    if language not in CHATTERBOT_LANGUAGES:
        raise ZooError(
            f"chatterbot-corpus has no language {language!r}",
            hint=f"available: {', '.join(sorted(CHATTERBOT_LANGUAGES))}",
        )
    return sample_texts(CHATTERBOT_LANGUAGES[language])


def english_prose() -> list[str]:
    """English sentences from Python's own reference documentation (the stdlib's pydoc_data).

    Real running prose with capitals, digits and punctuation that ships with every Python:
    paragraphs are joined, code and grammar blocks (indented) and headings are dropped, and
    paragraphs are split into sentences; deduplicated, in topic order.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ZooError("this Python lacks the pydoc_data module", hint="install the full Python standard library") from None
    sentences: dict[str, None] = {}
    for name in sorted(topics):
        for paragraph in topics[name].split("\n\n"):
            lines = paragraph.split("\n")
            if any(line.startswith(" ") or _HEADING_RULE.match(line.strip()) for line in lines if line):
                continue
            text = " ".join(line.strip() for line in lines).strip()
            for sentence in _SENTENCE_END.split(text):
                if len(sentence.split()) >= 5 and sentence[0].isupper() and sentence[-1] in ".!?":
                    sentences.setdefault(sentence)
    return list(sentences)
