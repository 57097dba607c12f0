"""Built-in evaluation sets: a few hundred real photographs and prose in nine languages.

Every item has a stable name, and a hash of that name puts it in the calibration split
(about a quarter) or the evaluation split (the rest): the two are disjoint by construction,
do not depend on the order or number of items, and never change between runs or machines.

    evaluation_images("eval")            # real photographs, deduplicated, short side >= 128 px
    evaluation_texts("de", "calib")      # German sentences and paragraphs for calibration
    token_buckets(texts, tokenizer)      # {"8-16": [...], "17-32": [...], ...}

Sources (pinned carrier packages, never installed; licences in docs/data.md):
photographs from GCompris (Debian gcompris-qt-data: monuments, animals, fishes, tools, renewable
energy, household objects; paintings and drawings left out), the MATE and Lomiri wallpaper
packages (nature photographs only), foolbox's ImageNet samples and scikit-image's photos;
prose from the Debian Reference in English and eight translations.
"""

from __future__ import annotations

import hashlib
import html.parser
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tokcomp.errors import ZooError
from tokcomp.fileio import atomic_directory, cache_dir, read_json, write_json
from tokcomp.zoo.debs import extract_deb_members, fetch_deb
from tokcomp.zoo.qt_resources import rcc_files
from tokcomp.zoo.samples import SampleImage, sample_images

SPLITS = ("calib", "eval")
CALIBRATION_SHARE = 0.25
_SPLIT_SALT = "tokcomp-split-v1"  # changing it reshuffles every split: never do that silently
MIN_SHORT_SIDE = 128
NEAR_DUPLICATE_COSINE = 0.89  # of mean-removed 16x16 grayscale thumbnails; the closest distinct pair is 0.881
MANIFEST_VERSION = 1


def split_of(name: str) -> str:
    """ "calib" or "eval" for an item's stable name: a salted SHA-256 of the name, so deterministic."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{name}".encode()).digest()
    return "calib" if int.from_bytes(digest[:8], "big") / 2**64 < CALIBRATION_SHARE else "eval"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ZooError(f"unknown split {split!r}", hint=f"use one of: {', '.join(SPLITS)}")


# ------------------------------------------------------------------ photographs


@dataclass(frozen=True)
class DebianPhotos:
    """Photographs in one Debian package: files under `prefix`, or inside the .rcc bundles named in `bundles`."""

    source: str  # short name, the first part of each photo's stable name
    package: str
    version: str
    prefix: str
    licence: str
    bundles: tuple[str, ...] = ()  # Qt resource bundles under prefix (GCompris); empty: plain files
    exclude: str = r"(?!)"  # regex on the path inside the package (or bundle): drawings, paintings, renders


IMAGE_FILE = re.compile(r"\.(jpe?g|png|webp)$", re.IGNORECASE)
DEBIAN_PHOTOS = (
    DebianPhotos(
        "gcompris", "gcompris-qt-data", "3.1-2", "usr/share/gcompris-qt/rcc/",
        "per file in the package's copyright file: CC-BY-SA 2.0-4.0, CC-BY 2.0-3.0, GFDL, CC0, public domain, GPL-3+",
        bundles=(
            "categorization.rcc", "details.rcc", "erase.rcc", "explore_farm_animals.rcc",
            "explore_monuments.rcc", "explore_world_animals.rcc",
        ),
        # numbers/alphabets are toy blocks for counting; details also holds Van Gogh paintings
        exclude=r"/(numbers|alphabets)/|gogh|portrait|/background\.|\.svg$",
    ),
    DebianPhotos("mate", "mate-backgrounds", "1.26.0-1", "usr/share/backgrounds/mate/nature/", "GPL-2+"),
    DebianPhotos(
        "lomiri", "lomiri-wallpapers-16.04", "20.04.0-2", "usr/share/backgrounds/",
        "CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0 (per file)",
        exclude=r"analogpattern|umang",  # a bokeh pattern and a colour gradient
    ),
)  # fmt: skip
WHEEL_PHOTOS = {  # the older built-in groups, both real photographs (tokcomp.zoo.samples)
    "imagenet": "ImageNet validation images, as shipped by foolbox 3.3.4 (ImageNet terms of access)",
    "skimage": "scikit-image 0.26.0 sample data: public domain / CC0 / BSD per image (skimage/data/README.txt)",
}


@dataclass(frozen=True)
class PhotoEntry:
    name: str  # stable: "<source>/<path>", e.g. "gcompris/explore_monuments/.../eiffel.webp"
    source: str
    path: str  # file under the cache's data folder, or "" for the wheel groups (decoded through samples.py)
    width: int
    height: int
    label: int | None  # ImageNet class for the foolbox images, else None
    split: str
    licence: str


def photo_catalogue() -> list[PhotoEntry]:
    """Every photograph with its split, sorted by name; built once (decoding all) and cached as a manifest."""
    manifest = _photos_root() / f"manifest-v{MANIFEST_VERSION}.json"
    extracted = all((_photos_root() / spec.source / ".complete").is_file() for spec in DEBIAN_PHOTOS)
    if manifest.is_file() and extracted:
        return [PhotoEntry(**entry) for entry in read_json(manifest)["photos"]]
    entries = _build_catalogue()
    write_json(manifest, {"version": MANIFEST_VERSION, "photos": [asdict(e) for e in entries]})
    return entries


def evaluation_images(split: str = "eval") -> list[SampleImage]:
    """The photographs of one split, decoded to RGB, sorted by name (see `photo_catalogue`)."""
    return [load_photo(entry) for entry in photo_entries(split)]


def photo_entries(split: str = "eval") -> list[PhotoEntry]:
    _check_split(split)
    return [entry for entry in photo_catalogue() if entry.split == split]


def load_photo(entry: PhotoEntry) -> SampleImage:
    if entry.path:
        with Image.open(_photos_root() / entry.path) as image:
            return SampleImage(entry.name, image.convert("RGB"), entry.label, entry.source)
    item = _wheel_photos()[entry.name]
    return SampleImage(entry.name, item.image, item.label, entry.source)


def _photos_root() -> Path:
    return cache_dir() / "data" / "photos"


def _wheel_photos() -> dict[str, SampleImage]:
    return {f"{group}/{item.name}": item for group in WHEEL_PHOTOS for item in sample_images(group)}


def _build_catalogue() -> list[PhotoEntry]:
    """All candidates in a fixed order (wheel groups, then Debian sources, each by name), deduplicated."""
    candidates: list[tuple[str, str, str, Callable[[], Image.Image], int | None]] = []
    for name, item in sorted(_wheel_photos().items()):
        candidates.append((name, name.split("/")[0], "", lambda item=item: item.image, item.label))
    for spec in DEBIAN_PHOTOS:
        for path in _debian_photo_files(spec):
            rel = str(path.relative_to(_photos_root()))
            candidates.append((f"{spec.source}/{path.relative_to(_photos_root() / spec.source)}", spec.source, rel,
                               lambda path=path: _open_rgb(path), None))  # fmt: skip
    licences = {**WHEEL_PHOTOS, **{spec.source: spec.licence for spec in DEBIAN_PHOTOS}}
    kept: list[PhotoEntry] = []
    seen_hashes: set[str] = set()
    thumbnails: list[np.ndarray] = []
    for name, source, rel, load, label in candidates:
        image = load()
        if min(image.size) < MIN_SHORT_SIDE:
            continue
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        thumbnail = _thumbnail(image)
        if digest in seen_hashes or _near_duplicate(thumbnail, thumbnails):
            continue
        seen_hashes.add(digest)
        thumbnails.append(thumbnail)
        kept.append(PhotoEntry(name, source, rel, *image.size, label, split_of(name), licences[source]))
    return sorted(kept, key=lambda e: e.name)


def _debian_photo_files(spec: DebianPhotos) -> list[Path]:
    """The package's photographs extracted under <photos root>/<source>/ (once), sorted."""
    folder = _photos_root() / spec.source
    done = folder / ".complete"
    if not done.is_file():
        deb = fetch_deb(spec.package, spec.version)
        with atomic_directory(folder, force=True, marker=None) as tmp:
            if spec.bundles:
                bundles = Path(tmp) / ".bundles"
                for bundle in extract_deb_members(deb, spec.prefix, bundles, spec.bundles):
                    for path, data in rcc_files(bundle.read_bytes(), bundle.name):
                        rel = f"{bundle.stem}/{path.removeprefix('gcompris/src/activities/')}"
                        if IMAGE_FILE.search(path) and not re.search(spec.exclude, rel, re.IGNORECASE):
                            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                            (Path(tmp) / rel).write_bytes(data)
                shutil.rmtree(bundles)
            else:
                for path in extract_deb_members(deb, spec.prefix, Path(tmp)):
                    rel = str(path.relative_to(tmp))
                    if not IMAGE_FILE.search(rel) or re.search(spec.exclude, rel, re.IGNORECASE):
                        path.unlink()
            (Path(tmp) / ".complete").write_text(f"{spec.package}={spec.version}\n")
    return sorted(p for p in folder.rglob("*") if p.is_file() and IMAGE_FILE.search(p.name))


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _thumbnail(image: Image.Image) -> np.ndarray:
    small = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), dtype=np.float64).ravel()
    small = small - small.mean()
    norm = np.linalg.norm(small)
    return small / norm if norm > 0 else small


def _near_duplicate(thumbnail: np.ndarray, kept: list[np.ndarray]) -> bool:
    """The same picture at another size, re-encoded or slightly re-cropped: thumbnails nearly collinear."""
    return bool(kept) and float(np.max(np.stack(kept) @ thumbnail)) >= NEAR_DUPLICATE_COSINE


# ------------------------------------------------------------------ texts

TEXT_PACKAGE_VERSION = "2.100"
TEXT_LANGUAGES = ("en", "de", "es", "fr", "id", "it", "ja", "pt", "zh-cn")
TEXT_LICENCE = "Debian Reference (debian-reference-*), GPL-2+ (Osamu Aoki and translators)"
LENGTH_BUCKETS = ((8, 16), (17, 32), (33, 64), (65, 128))
_CJK = {"ja", "zh-cn"}
_LATIN_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(¿¡«“]?[A-ZÀ-ÖØ-Þ])")
_CJK_SENTENCE_END = re.compile(r"(?<=[。！？])")


def evaluation_texts(language: str = "en", split: str = "eval") -> list[str]:
    """Sentences and whole paragraphs of the Debian Reference in `language`, for one split.

    A paragraph and its sentences always share a split, and so do a paragraph and its translations
    (the split key is the chapter and the paragraph's position, the same in every language).
    Paragraphs a translation left in English are dropped. Sorted by (chapter, paragraph, position).
    """
    _check_split(split)
    return [text for key, text in _text_units(language) if split_of(key) == split]


def _text_units(language: str) -> list[tuple[str, str]]:
    if language not in TEXT_LANGUAGES:
        raise ZooError(f"no evaluation texts in language {language!r}", hint=f"use one of: {', '.join(TEXT_LANGUAGES)}")
    english = {p for _, _, p in _paragraphs("en")} if language != "en" else set()
    units: dict[str, str] = {}  # text -> split key (first occurrence wins)
    for chapter, index, paragraph in _paragraphs(language):
        if paragraph in english:
            continue  # untranslated
        key = f"debian-reference/{chapter}/{index}"
        sentences = [s for s in _sentences(paragraph, language) if _is_prose(s, language)]
        for text in sentences + ([paragraph] if len(sentences) > 1 else []):
            units.setdefault(text, key)
    return [(key, text) for text, key in units.items()]


def _paragraphs(language: str) -> list[tuple[str, int, str]]:
    """(chapter, index, text) of every <p> of the HTML chapters, whitespace collapsed."""
    folder = _text_folder(language)
    out = []
    for path in sorted(folder.glob(f"ch*.{language}.html")):
        parser = _ParagraphParser()
        parser.feed(path.read_text(encoding="utf-8"))
        chapter = path.name.split(".")[0]
        out += [(chapter, i, p) for i, p in enumerate(parser.paragraphs) if p]
    if not out:
        raise ZooError(f"no chapters found for language {language!r}", hint="the Debian Reference layout changed")
    return out


def _text_folder(language: str) -> Path:
    package = f"debian-reference-{language}"
    folder = cache_dir() / "data" / f"{package}-{TEXT_PACKAGE_VERSION}"
    if not (folder / ".complete").is_file():
        deb = fetch_deb(package, TEXT_PACKAGE_VERSION)
        with atomic_directory(folder, force=True, marker=None) as tmp:
            for path in extract_deb_members(deb, "usr/share/debian-reference/", Path(tmp)):
                if not path.name.endswith(f".{language}.html"):
                    path.unlink()
            (Path(tmp) / ".complete").write_text(f"{package}={TEXT_PACKAGE_VERSION}\n")
    return folder


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of <p> elements; text inside <pre> (command listings) is skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self._depth = 0
        self._pre = 0
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "p":
            self._depth += 1
            self._parts = [] if self._depth == 1 else self._parts
        elif tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag == "p" and self._depth:
            self._depth -= 1
            if not self._depth:
                self.paragraphs.append(" ".join("".join(self._parts).split()))

    def handle_data(self, data: str) -> None:
        if self._depth and not self._pre:
            self._parts.append(data)


def _sentences(paragraph: str, language: str) -> list[str]:
    pattern = _CJK_SENTENCE_END if language in _CJK else _LATIN_SENTENCE_END
    return [s.strip() for s in pattern.split(paragraph) if s.strip()]


def _is_prose(sentence: str, language: str) -> bool:
    """A sentence of running text: mostly letters, ends like a sentence, long enough to mean something."""
    letters = sum(ch.isalpha() or ch.isspace() for ch in sentence)
    if letters < 0.85 * len(sentence) or sentence[-1] not in ".!?。！？":
        return False
    return len(sentence) >= 12 if language in _CJK else len(sentence.split()) >= 4


def token_buckets(
    texts: Iterable[str], count_tokens: Callable[[str], int], buckets: tuple[tuple[int, int], ...] = LENGTH_BUCKETS
) -> dict[str, list[str]]:
    """Texts grouped by token count into "lo-hi" buckets (inclusive); texts outside every bucket are left out."""
    grouped: dict[str, list[str]] = {f"{lo}-{hi}": [] for lo, hi in buckets}
    for text in texts:
        n = count_tokens(text)
        for lo, hi in buckets:
            if lo <= n <= hi:
                grouped[f"{lo}-{hi}"].append(text)
                break
    return grouped
