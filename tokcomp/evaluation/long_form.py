"""Long-form transcription: recordings longer than Whisper's 30 s window, in overlapping windows.

A recording is cut into windows of `window` seconds that start every `window - overlap`
seconds (the last one ends at the recording's end, shorter and padded like any short clip).
Every window is transcribed greedily on its own (`transcribe`, batched, no timestamps, no
text carried over from the previous window), so a compressed model and its original see
exactly the same windows. The texts are then joined pairwise:

1. words are compared after normalisation (lower case, letters and digits only);
2. the end of the text so far and the start of the next window's text are laid over each
   other at every overlap length n (the last n words against the first n); the length with
   the highest share of equal words wins (ties: the longer), and it needs at least
   MIN_MATCHES equal words, else the texts are simply concatenated;
3. inside the matched overlap the first half of the words comes from the earlier window
   and the second half from the later one: a window's edge cuts words in half, so each
   side keeps the part of the overlap that lies away from its own edge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.errors import TokcompError
from tokcomp.evaluation.speech import MAX_SECONDS, transcribe

WINDOW_SECONDS = 30.0
OVERLAP_SECONDS = 5.0
MIN_MATCHES = 2  # fewer equal words than this is no evidence that the two texts overlap
_NOT_WORD = re.compile(r"[^\w]+", re.UNICODE)


@dataclass(frozen=True)
class Window:
    start: float  # seconds
    end: float


def windows(seconds: float, window: float = WINDOW_SECONDS, overlap: float = OVERLAP_SECONDS) -> list[Window]:
    """Windows of `window` s starting every `window - overlap` s and covering [0, seconds]."""
    if not 0 < window <= MAX_SECONDS:
        raise TokcompError(f"window {window} s is outside (0, {MAX_SECONDS:.0f}] s", hint="Whisper reads at most 30 s")
    if not 0 <= overlap < window / 2:
        raise TokcompError(f"overlap {overlap} s must be at least 0 and under half the window", hint="e.g. 5 s of 30 s")
    step = window - overlap
    out = [Window(0.0, min(window, seconds))]
    while out[-1].end < seconds:
        start = out[-1].start + step
        out.append(Window(start, min(start + window, seconds)))
    return out


def transcribe_long(
    model,
    processor,
    clips: Sequence[SpeechClip],
    language: str | None = None,
    window: float = WINDOW_SECONDS,
    overlap: float = OVERLAP_SECONDS,
    batch_size: int = 8,
) -> list[str]:
    """Greedy transcripts of clips of any length (one string each, in order); short clips are one window."""
    pieces: list[SpeechClip] = []
    owners: list[int] = []
    for index, clip in enumerate(clips):
        for w in windows(clip.seconds, window, overlap):
            audio = clip.audio[round(w.start * SAMPLE_RATE) : round(w.end * SAMPLE_RATE)]
            pieces.append(SpeechClip(f"{clip.name}@{w.start:.1f}s", audio, None, clip.language))
            owners.append(index)
    texts = transcribe(model, processor, pieces, language=language, batch_size=batch_size)
    joined = [""] * len(clips)
    for owner, text in zip(owners, texts, strict=True):
        joined[owner] = merge_texts(joined[owner], text)
    return joined


def merge_texts(left: str, right: str) -> str:
    """`left` and `right` joined where the end of one repeats the start of the other (module docstring)."""
    a, b = left.split(), right.split()
    if not a or not b:
        return " ".join(a + b)
    n = overlap_length(a, b)
    if n == 0:
        return " ".join(a + b)
    keep = n // 2  # of the overlap, the first `keep` words come from the left, the rest from the right
    return " ".join(a[: len(a) - n + keep] + b[keep:])


def overlap_length(a: list[str], b: list[str]) -> int:
    """The number of words by which the end of `a` and the start of `b` overlap best; 0 when they do not."""
    norm_a, norm_b = [_norm(w) for w in a], [_norm(w) for w in b]
    best, best_share = 0, 0.0
    for n in range(1, min(len(a), len(b)) + 1):
        matches = sum(x == y and x != "" for x, y in zip(norm_a[-n:], norm_b[:n], strict=True))
        share = matches / n
        if matches >= MIN_MATCHES and share >= best_share:
            best, best_share = n, share
    return best


def _norm(word: str) -> str:
    return _NOT_WORD.sub("", word.lower())
