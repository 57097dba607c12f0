"""Real speech with reference transcripts, from Debian packages, split into calibration and evaluation.

    librivox      5 LibriVox readings (Sense and Sensibility), English, 16 kHz   pocketsphinx-testdata
    commands      5 spoken card names and "go forward ten meters", English        pocketsphinx-testdata
    asterisk-en   telephone prompts of Asterisk's core sounds, 8 kHz, per language:
    asterisk-fr     asterisk-core-sounds-<lang>-wav (audio) and asterisk-core-sounds-<lang>
    asterisk-es     (transcripts, core-sounds-<lang>.txt.gz, one "name: text" line per prompt)
    asterisk-ru

The packages are fetched once with `apt-get download` into `cache_dir()/debs/` and unpacked
with `dpkg -x` into `cache_dir()/data/<package>/`; both steps are atomic. Audio is returned
as 16 kHz float32 mono (tokcomp.data.audio).

Transcript cleaning (Asterisk): prompts whose text holds a note or a symbol (brackets,
parentheses, * # @ % & = + / \\ | ~ ^ _ < >), fewer than MIN_WORDS words, no audio file, or
audio longer than MAX_SECONDS (Whisper's window) are dropped.

Splits, fixed and documented so calibration never sees an evaluation clip:
- librivox and commands are evaluation only (too few clips to split);
- each Asterisk language is split by a hash of the prompt name: SHA-256 of
  "<source>/<name>", first 8 bytes as an integer / 2**64; below CALIBRATION_SHARE it is a
  calibration clip, otherwise an evaluation clip. The split depends on nothing but the
  name, so it is the same on every machine and stable when prompts are added.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tokcomp.data.audio import SAMPLE_RATE, SpeechClip, audio_seconds, load_audio
from tokcomp.errors import ZooError
from tokcomp.fileio import atomic_directory, cache_dir
from tokcomp.zoo.debs import apt_error, fetch_deb

POCKETSPHINX = "pocketsphinx-testdata"
POCKETSPHINX_DATA = "usr/share/pocketsphinx/test/data"
# Asterisk's voice per language (the folder its prompts are installed into).
ASTERISK_VOICES = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June", "es": "es_MX_f_Allison", "ru": "ru_RU_f_IvrvoiceRU"}
SOURCES = ("librivox", "commands", *(f"asterisk-{lang}" for lang in ASTERISK_VOICES))
SPLITS = ("calibration", "evaluation", "all")
CALIBRATION_SHARE = 0.3
MIN_WORDS = 3
MAX_SECONDS = 30.0
_SYMBOLS = re.compile(r"[\[\](){}<>*#@%&=+/\\|~^_]")
_WORD = re.compile(r"\w", re.UNICODE)
# pocketsphinx transcription lines: "<s> words </s> (utterance-id)"
_SPHINX_LINE = re.compile(r"^\s*(?:<s>)?(?P<text>.*?)(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


def speech_clips(source: str, split: str = "evaluation", limit: int | None = None) -> list[SpeechClip]:
    """The clips of zoo speech `source` (see SOURCES) in `split`, sorted by name.

    `limit` keeps at most that many: those whose names' SHA-256 (hex) sorts first, a fixed
    spread over the prompts rather than the alphabetically first ones (among the clips of at
    most MAX_SECONDS).
    """
    if source not in SOURCES:
        raise ZooError(f"unknown speech source {source!r}; valid sources: {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise ZooError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    entries = _catalogue(source)  # (name, audio path, transcript, language)
    chosen = [
        e for e in entries if (split == "all" or split_of(source, e[0]) == split) and _seconds(e[1]) <= MAX_SECONDS
    ]
    if limit is not None and len(chosen) > limit:
        chosen = sorted(sorted(chosen, key=lambda e: hashlib.sha256(e[0].encode()).hexdigest())[:limit])
    return [
        SpeechClip(name, _raw_pcm(path) if path.suffix == ".raw" else load_audio(path), transcript, language)
        for name, path, transcript, language in chosen
    ]


def long_speech_clips(source: str) -> list[SpeechClip]:
    """The recordings of zoo speech `source` longer than MAX_SECONDS (for long-form transcription), by name.

    speech_clips() leaves them out of both splits, so no calibration ever saw them. Only the
    Asterisk sources have any (a few prompts of 30-86 s per language); librivox and commands
    hold none, and their clips are not consecutive pieces of one recording (the LibriVox
    utterances 0900 and 0910 are missing, and all five make 24.7 s).
    """
    if source not in SOURCES:
        raise ZooError(f"unknown speech source {source!r}; valid sources: {', '.join(SOURCES)}")
    entries = [e for e in _catalogue(source) if _seconds(e[1]) > MAX_SECONDS]
    return [SpeechClip(name, load_audio(path), transcript, language) for name, path, transcript, language in entries]


def _seconds(path: Path) -> float:
    return path.stat().st_size / 2 / SAMPLE_RATE if path.suffix == ".raw" else audio_seconds(path)


def split_of(source: str, name: str) -> str:
    """ "calibration" or "evaluation": the fixed split of clip `name` of `source` (module docstring)."""
    if not source.startswith("asterisk-"):
        return "evaluation"
    digest = hashlib.sha256(f"{source}/{name}".encode()).digest()
    return "calibration" if int.from_bytes(digest[:8], "big") / 2**64 < CALIBRATION_SHARE else "evaluation"


def clean_transcript(text: str) -> str | None:
    """The prompt's text with whitespace collapsed, or None when it is dropped (module docstring)."""
    text = " ".join(text.split())
    if _SYMBOLS.search(text):
        return None
    words = [w for w in text.split() if _WORD.search(w)]
    return text if len(words) >= MIN_WORDS else None


# ------------------------------------------------------------------ catalogues


def _catalogue(source: str) -> list[tuple[str, Path, str, str]]:
    if source == "librivox":
        data = package_folder(POCKETSPHINX) / POCKETSPHINX_DATA
        return _sphinx_clips(data / "librivox", data / "librivox" / "transcription", "")
    if source == "commands":
        data = package_folder(POCKETSPHINX) / POCKETSPHINX_DATA
        cards = _sphinx_clips(data / "cards", data / "cards" / "cards.transcription", "cards/")
        return [*cards, ("goforward", data / "goforward.raw", _grammar_sentence(data / "goforward.gram"), "en")]
    return _asterisk(source.removeprefix("asterisk-"))


def _sphinx_clips(folder: Path, transcription: Path, prefix: str) -> list[tuple[str, Path, str, str]]:
    clips = []
    for line in transcription.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        match = _SPHINX_LINE.match(line)
        if match is None:
            raise ZooError(f"{transcription}: unexpected line {line!r}", hint=_LAYOUT_HINT)
        utterance = match["id"].strip()
        clips.append((prefix + utterance, folder / f"{utterance}.wav", " ".join(match["text"].split()), "en"))
    return sorted(clips)


def _grammar_sentence(gram: Path) -> str:
    """The one sentence of a JSGF grammar with a single public rule ("go forward ten meters")."""
    match = re.search(r"public\s*<\w+>\s*=\s*([^;|]+);", gram.read_text(encoding="utf-8"))
    if match is None:
        raise ZooError(f"{gram} has no single-sentence public rule", hint=_LAYOUT_HINT)
    return " ".join(match[1].split())


def _raw_pcm(path: Path) -> np.ndarray:
    """pocketsphinx's .raw files: headerless 16-bit little-endian mono at 16 kHz."""
    return (np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0).copy()


def _asterisk(language: str) -> list[tuple[str, Path, str, str]]:
    audio_pkg, text_pkg = f"asterisk-core-sounds-{language}-wav", f"asterisk-core-sounds-{language}"
    sounds = package_folder(audio_pkg) / "usr/share/asterisk/sounds" / ASTERISK_VOICES[language]
    listing = package_folder(text_pkg) / f"usr/share/doc/{text_pkg}/core-sounds-{language}.txt.gz"
    if not listing.is_file():
        raise ZooError(f"{text_pkg} has no {listing.name}", hint=_LAYOUT_HINT)
    clips = []
    for line in gzip.decompress(listing.read_bytes()).decode("utf-8").splitlines():
        if line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        name, cleaned = name.strip(), clean_transcript(text)
        # Names are relative paths ("dictate/pause"); never read outside the sounds folder.
        if cleaned is None or ".." in Path(name).parts or name.startswith("/"):
            continue
        wav = sounds / f"{name}.wav"
        if wav.is_file():
            clips.append((name, wav, cleaned, language))
    return sorted(clips)


_LAYOUT_HINT = "the Debian package's layout changed; report this as a tokcomp bug"


# ------------------------------------------------------------------ Debian packages


def package_folder(package: str) -> Path:
    """`cache_dir()/data/<package>/`: the package's files unpacked (as by dpkg -x), on first use."""
    folder = cache_dir() / "data" / package
    if (folder / ".complete").is_file():
        return folder
    deb = fetch_deb(package)
    if shutil.which("dpkg") is None:
        raise ZooError(
            f"cannot unpack {deb.name}: dpkg is not installed", hint="install dpkg (Debian/Ubuntu's package tool)"
        )
    with atomic_directory(folder, force=True, marker=None) as tmp:
        result = subprocess.run(["dpkg", "-x", str(deb), str(tmp)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ZooError(f"dpkg -x {deb.name} failed: {apt_error(result.stderr)}", hint=f"delete {deb} and try again")
        (tmp / ".complete").write_text(deb.name + "\n")
    return folder
