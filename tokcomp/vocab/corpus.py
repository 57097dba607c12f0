"""Corpus entries -> texts grouped by language, plus held-out and off-target text for the checks.

    zoo:wordfreq[:lang]    wordfreq word list (weighted forms, see wordlists.py)
    zoo:chatterbot[:lang]  chatterbot-corpus dialogue sentences
    zoo:pydocs             English prose from Python's reference documentation
    <file>.txt             one text per line
    <file>.jsonl           one JSON object per line; the text is record[field]
    <folder>               a data set written by datasets' save_to_disk (one split); row[field]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokcomp.errors import TokcompError
from tokcomp.fileio import read_jsonl, read_text
from tokcomp.vocab.config import CorpusEntry, VocabTrimConfig, WordListSettings
from tokcomp.vocab.wordlists import word_texts

SHARED = "*"  # the language group of files when the pass serves several languages and the entry names none
HOLD_OUT_EVERY = 10  # the default held-out split: every 10th text of the sentence sources
OFF_TARGET_DEFAULTS = ("ru", "zh")  # Cyrillic, or Han when Russian is a target


@dataclass
class CorpusPart:
    name: str  # e.g. "zoo:wordfreq:de" or the file path
    language: str
    texts: list[str]
    counts: list[float] | None = None  # None: every text counts once
    sentences: bool = True  # running text (eligible for the default held-out split)


@dataclass
class Corpus:
    parts: list[CorpusPart]  # what is counted
    held_out: list[str]
    held_out_source: str
    off_target: list[str]
    off_target_source: str


def load_corpus(config: VocabTrimConfig) -> Corpus:
    parts = [p for entry in config.corpus for p in resolve(entry, config.languages, config.wordfreq)]
    if not any(p.texts for p in parts):
        raise TokcompError("the vocab_trim corpus holds no text", hint="check the corpus sources")
    checks = config.checks
    if checks.held_out is None:
        held_out, parts = _split_held_out(parts)
        held_out_source = f"every {HOLD_OUT_EVERY}th text of {', '.join(p.name for p in parts if p.sentences)}"
    else:
        held_out = [t for e in checks.held_out for p in resolve(e, config.languages, config.wordfreq) for t in p.texts]
        held_out_source = ", ".join(e.source for e in checks.held_out)
    if not held_out:
        raise TokcompError(
            "no held-out text for the vocab_trim checks",
            hint="set checks.held_out, or add a sentence source (a .txt / .jsonl file, zoo:chatterbot) to the corpus",
        )
    off_entries = checks.off_target
    if off_entries is None:
        language = next(code for code in OFF_TARGET_DEFAULTS if code not in config.languages)
        off_entries = [CorpusEntry(source=f"zoo:chatterbot:{language}")]
    off_target = [t for e in off_entries for p in resolve(e, config.languages, config.wordfreq) for t in p.texts]
    return Corpus(
        parts=parts,
        held_out=held_out[: checks.max_texts],
        held_out_source=held_out_source,
        off_target=off_target[: checks.max_texts],
        off_target_source=", ".join(e.source for e in off_entries) or "none",
    )


def resolve(entry: CorpusEntry, languages: list[str], wordfreq: WordListSettings) -> list[CorpusPart]:
    """One part per language for zoo sources without a language, else one part."""
    from tokcomp.zoo import samples

    source = entry.source
    if source.startswith("zoo:"):
        kind, _, language = source[len("zoo:") :].partition(":")
        if kind == "pydocs":
            return [CorpusPart(source, "en", _limit(samples.english_prose(), entry.limit))]
        targets = [language or entry.language] if (language or entry.language) else languages
        parts = []
        for code in targets:
            name = f"zoo:{kind}:{code}"
            if kind == "wordfreq":
                words = samples.word_frequencies(code, entry.limit or wordfreq.words)
                texts, counts = word_texts(words, wordfreq.scale, wordfreq.variants)
                parts.append(CorpusPart(name, entry.language or code, texts, counts, sentences=False))
            else:
                parts.append(CorpusPart(name, entry.language or code, _limit(samples.chatterbot_texts(code), entry.limit)))
        return parts
    language = entry.language or (languages[0] if len(languages) == 1 else SHARED)
    return [CorpusPart(source, language, _limit(read_texts(Path(source), entry.field), entry.limit))]


def read_texts(path: Path, field: str) -> list[str]:
    """Non-empty texts of a .txt / .jsonl file or a save_to_disk data set folder."""
    if path.is_dir():
        return _dataset_texts(path, field)
    if not path.is_file():
        raise TokcompError(f"corpus file {path} not found", hint="use a .txt / .jsonl file, a data set folder or zoo:...")
    if path.suffix == ".txt":
        return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        texts = []
        for number, record in read_jsonl(path):
            if not isinstance(record.get(field), str):
                raise TokcompError(f"{path}:{number}: no text field {field!r}", hint="set `field:` on the corpus entry")
            texts.append(record[field])
        return [t for t in texts if t.strip()]
    raise TokcompError(f"corpus file {path} is not .txt or .jsonl", hint="convert it, or save it as a data set folder")


def _dataset_texts(path: Path, field: str) -> list[str]:
    if not (path / "state.json").is_file():
        raise TokcompError(
            f"{path} is a folder but not a data set written by save_to_disk (no state.json)",
            hint="for a DatasetDict, point at one split folder, e.g. <folder>/train",
        )
    try:
        import datasets
    except ImportError:
        raise TokcompError(f"{path} is a Hugging Face data set; reading it needs `datasets`", hint="pip install datasets") from None
    table = datasets.load_from_disk(str(path))
    if field not in table.column_names:
        raise TokcompError(f"{path} has no column {field!r}", hint=f"columns: {', '.join(table.column_names)}")
    return [t for t in table[field] if isinstance(t, str) and t.strip()]


def _limit(texts: list[str], limit: int | None) -> list[str]:
    return texts[:limit] if limit is not None else texts


def _split_held_out(parts: list[CorpusPart]) -> tuple[list[str], list[CorpusPart]]:
    held_out: list[str] = []
    kept_parts = []
    for part in parts:
        if not part.sentences:
            kept_parts.append(part)
            continue
        held_out += [t for i, t in enumerate(part.texts) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
        rest = [t for i, t in enumerate(part.texts) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
        kept_parts.append(CorpusPart(part.name, part.language, rest, None, True))
    return held_out, kept_parts
