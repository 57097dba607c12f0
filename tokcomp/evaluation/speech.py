"""Speech recognition quality: greedy transcription, text normalisation, word and character error rates.

Both sides of every comparison are normalised the same way before scoring:
- English: Whisper's English normaliser (transformers' EnglishTextNormalizer): lower case,
  punctuation and fillers removed, spelled-out numbers written as digits ("ten" -> "10");
  no British-to-American spelling map is applied (the carriers do not ship one);
- French, Spanish, Russian: numerals spelled out in words ("2" -> "deux" / "dos" / "два"),
  then lower case with punctuation and symbols replaced by spaces; Spanish also drops
  accents (the Asterisk transcripts mostly omit them), Russian writes ё as е;
- any other language: lower case, punctuation and symbols replaced by spaces.

WER = word edits (substitutions + deletions + insertions) / reference words; CER the same on
characters (spaces between words count as characters). Corpus rates sum edits and lengths
over all clips, so long clips weigh more than short ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.errors import TokcompError

MAX_SECONDS = 30.0  # Whisper's window; longer clips need chunking


# ------------------------------------------------------------------ normalisation


def normalize(text: str, language: str | None) -> str:
    """`text` normalised for scoring in `language` (ISO 639-1 code; None for unknown)."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    if language == "en":
        return _english()(text)
    if language in _NUMBER_WORDS:
        text = _DIGITS.sub(lambda m: _NUMBER_WORDS[language](int(m[0])), text)
    text = BasicTextNormalizer(remove_diacritics=language == "es")(text)
    if language == "ru":
        text = text.replace("ё", "е")
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _english():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


_DIGITS = re.compile(r"\d+")


def _spanish(n: int) -> str:
    small = [
        "cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "once",
        "doce", "trece", "catorce", "quince", "dieciseis", "diecisiete", "dieciocho", "diecinueve",
        "veinte", "veintiuno", "veintidos", "veintitres", "veinticuatro", "veinticinco", "veintiseis",
        "veintisiete", "veintiocho", "veintinueve"
    ]  # fmt: skip
    tens = {3: "treinta", 4: "cuarenta", 5: "cincuenta", 6: "sesenta", 7: "setenta", 8: "ochenta", 9: "noventa"}
    hundreds = ["", "ciento", "doscientos", "trescientos", "cuatrocientos", "quinientos", "seiscientos", "setecientos",
                "ochocientos", "novecientos"]  # fmt: skip
    if n < 30:
        return small[n]
    if n < 100:
        return tens[n // 10] + ("" if n % 10 == 0 else " y " + small[n % 10])
    if n < 1000:
        if n == 100:
            return "cien"
        return hundreds[n // 100] + ("" if n % 100 == 0 else " " + _spanish(n % 100))
    if n < 1_000_000:
        head = "mil" if n // 1000 == 1 else _spanish(n // 1000) + " mil"
        return head + ("" if n % 1000 == 0 else " " + _spanish(n % 1000))
    return str(n)


def _french(n: int) -> str:
    small = [
        "zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze",
        "douze", "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit", "dix-neuf"
    ]  # fmt: skip
    tens = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}
    if n < 20:
        return small[n]
    if n < 70:
        unit = n % 10
        return tens[n // 10] + ("" if unit == 0 else " et un" if unit == 1 else "-" + small[unit])
    if n < 80:
        return "soixante" + (" et onze" if n == 71 else "-" + small[n - 60])
    if n < 100:
        return "quatre-vingts" if n == 80 else "quatre-vingt-" + small[n - 80]
    if n < 1000:
        head = "cent" if n // 100 == 1 else small[n // 100] + " cent"
        if n % 100 == 0:
            return head + ("s" if n // 100 > 1 else "")
        return head + " " + _french(n % 100)
    if n < 1_000_000:
        head = "mille" if n // 1000 == 1 else _french(n // 1000) + " mille"
        return head + ("" if n % 1000 == 0 else " " + _french(n % 1000))
    return str(n)


def _russian(n: int, feminine: bool = False) -> str:
    small = [
        "ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять", "десять",
        "одиннадцать", "двенадцать", "тринадцать", "четырнадцать", "пятнадцать", "шестнадцать",
        "семнадцать", "восемнадцать", "девятнадцать"
    ]  # fmt: skip
    if feminine:
        small[1:3] = ["одна", "две"]
    tens = [None, None, "двадцать", "тридцать", "сорок", "пятьдесят", "шестьдесят", "семьдесят", "восемьдесят",
            "девяносто"]  # fmt: skip
    hundreds = [None, "сто", "двести", "триста", "четыреста", "пятьсот", "шестьсот", "семьсот", "восемьсот",
                "девятьсот"]  # fmt: skip
    if n < 20:
        return small[n]
    if n < 100:
        return tens[n // 10] + ("" if n % 10 == 0 else " " + small[n % 10])
    if n < 1000:
        return hundreds[n // 100] + ("" if n % 100 == 0 else " " + _russian(n % 100, feminine))
    if n < 1_000_000:
        count, rest = n // 1000, n % 1000
        last, last_two = count % 10, count % 100
        noun = (
            "тысяча"
            if last == 1 and last_two != 11
            else "тысячи"
            if 2 <= last <= 4 and not 12 <= last_two <= 14
            else "тысяч"
        )
        head = noun if count == 1 else _russian(count, feminine=True) + " " + noun
        return head + ("" if rest == 0 else " " + _russian(rest))
    return str(n)


_NUMBER_WORDS = {"es": _spanish, "fr": _french, "ru": _russian}


# ------------------------------------------------------------------ error rates


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (unit costs) between two sequences of hashable items."""
    if not reference:
        return len(hypothesis)
    if not hypothesis:
        return len(reference)
    ids: dict = {}
    ref = np.array([ids.setdefault(x, len(ids)) for x in reference])
    hyp = np.array([ids.setdefault(x, len(ids)) for x in hypothesis])
    steps = np.arange(len(hyp) + 1)
    row = steps.copy()  # distances from the empty reference prefix
    for token in ref:
        # Substitution/match and deletion first; then insertions along the row, which is a running
        # minimum: d[j] = min_k(tmp[k] + j - k) = j + cummin(tmp[k] - k).
        tmp = np.empty_like(row)
        tmp[0] = row[0] + 1
        tmp[1:] = np.minimum(row[:-1] + (hyp != token), row[1:] + 1)
        row = np.minimum.accumulate(tmp - steps) + steps
    return int(row[-1])


@dataclass(frozen=True)
class ClipScore:
    word_errors: int
    words: int  # reference words
    char_errors: int
    chars: int  # reference characters


def score_clip(reference: str, hypothesis: str, language: str | None) -> ClipScore:
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    return ClipScore(edit_distance(ref.split(), hyp.split()), len(ref.split()), edit_distance(ref, hyp), len(ref))


@dataclass(frozen=True)
class SpeechScore:
    wer: float
    cer: float
    word_errors: int
    words: int
    char_errors: int
    chars: int
    clips: int

    def as_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def corpus_score(scores: Sequence[ClipScore]) -> SpeechScore:
    words = sum(s.words for s in scores)
    chars = sum(s.chars for s in scores)
    word_errors = sum(s.word_errors for s in scores)
    char_errors = sum(s.char_errors for s in scores)
    return SpeechScore(
        wer=word_errors / max(words, 1),
        cer=char_errors / max(chars, 1),
        word_errors=word_errors,
        words=words,
        char_errors=char_errors,
        chars=chars,
        clips=len(scores),
    )


def error_rates(
    references: Sequence[str], hypotheses: Sequence[str], languages: str | None | Sequence[str | None]
) -> tuple[SpeechScore, list[ClipScore]]:
    """Corpus WER/CER of `hypotheses` against `references` (normalised per clip language), and per-clip scores."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if languages is None or isinstance(languages, str):
        languages = [languages] * len(references)
    clips = [score_clip(r, h, lang) for r, h, lang in zip(references, hypotheses, languages, strict=True)]
    return corpus_score(clips), clips


# ------------------------------------------------------------------ transcription


def transcribe(
    model,
    processor,
    clips: Sequence[SpeechClip],
    language: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy transcripts of `clips` (one string each, in order) with a Whisper model.

    `language` forces one language for every clip; None uses each clip's own language
    where it has one and lets a multilingual model detect it otherwise. An English-only
    model accepts only English (or None). Clips are at most MAX_SECONDS long. `max_new_tokens`
    caps each transcript (None: the model's own limit, 448 tokens for Whisper); a cap keeps a
    decoder caught in a repetition loop from costing its whole limit.
    """
    import torch

    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    for clip in clips:
        if len(clip.audio) > MAX_SECONDS * SAMPLE_RATE:
            raise TokcompError(
                f"clip {clip.name} is {clip.seconds:.1f} s long; transcribe() takes clips up to {MAX_SECONDS:.0f} s",
                hint="cut long recordings into pieces of at most 30 s",
            )
        wanted = language or clip.language
        if not multilingual and wanted not in (None, "en"):
            raise TokcompError(
                f"clip {clip.name} is in {wanted!r} but this Whisper model is English-only",
                hint="use a multilingual model such as zoo:whisper-base",
            )
        known = getattr(model.generation_config, "lang_to_id", {})
        if multilingual and wanted is not None and f"<|{wanted}|>" not in known:
            raise TokcompError(
                f"clip {clip.name}: Whisper has no language {wanted!r}",
                hint="give an ISO 639-1 code Whisper knows, e.g. en, fr, es, ru",
            )
    # One generate call per language: forced-language prompts differ, detection is per batch.
    groups: dict[str | None, list[int]] = {}
    for index, clip in enumerate(clips):
        groups.setdefault((language or clip.language) if multilingual else None, []).append(index)
    texts: list[str] = [""] * len(clips)
    for lang, indices in groups.items():
        options = {"language": lang, "task": "transcribe"} if multilingual and lang else {}
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            features = processor.feature_extractor(
                [clips[i].audio for i in chunk], sampling_rate=SAMPLE_RATE, return_tensors="pt"
            ).input_features.to(model.device, model.dtype)
            with torch.inference_mode():
                cap = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
                tokens = model.generate(features, do_sample=False, num_beams=1, **options, **cap)
            for i, text in zip(chunk, processor.batch_decode(tokens, skip_special_tokens=True), strict=True):
                texts[i] = text.strip()
    return texts
