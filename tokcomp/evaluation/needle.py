"""Needle in a haystack for base (non-instruction) decoder LLMs, written as continuations.

A prompt is held-out prose (the haystack) with k short facts planted in it ("Marco's locker
code is 60494."), ending with the start of one of them ("Marco's locker code is"). The model
passes when its greedy continuation starts with that fact's exact digits. A base model does
not follow instructions ("What is the code?"), but it does continue a sentence it has seen.

- Haystack: the evaluation split of the built-in English prose (zoo:prose, Debian Reference
  sentences in document order), never its calibration split (zoo:prose-calib): a hash of each
  paragraph's place decides the split, so the two never share a sentence.
- Lengths are measured in the model's own tokenizer (special tokens included), whole sentences
  only: a prompt is at most `length` tokens and short of it by less than one sentence.
- Depth: the queried fact starts at that share of the prompt's tokens; the other k - 1 facts
  (distractors with other names and values) sit at seeded random depths.
- Everything (haystack start, names, values, distractor depths) follows from one seed per sample.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from tokcomp.errors import TokcompError

NAMES = (
    "Marco", "Aisha", "Kenji", "Olga", "Tomas", "Priya", "Lucas", "Fatima", "Henrik", "Mei", "Diego", "Ingrid",
    "Samir", "Chloe", "Pavel", "Amara", "Jonas", "Leila", "Mateo", "Sofia", "Arjun", "Elena", "Kwame", "Yuki",
)  # fmt: skip
ITEMS = (
    "locker code", "door code", "bike lock code", "safe combination", "account number", "parcel number",
    "badge number", "ticket number", "membership number", "room code",
)  # fmt: skip
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)
ANSWER_TOKENS = 8  # greedy tokens generated: enough for " 60494." in any tokenizer that splits digits
HAYSTACK_SOURCE = "zoo:prose (English Debian Reference, evaluation split; never the calibration split)"


class NeedleError(TokcompError):
    """A needle prompt that cannot be built as asked."""


@dataclass(frozen=True)
class Fact:
    name: str
    item: str
    value: str  # five digits

    @property
    def query(self) -> str:
        return f"{self.name}'s {self.item} is"

    @property
    def sentence(self) -> str:
        return f"{self.query} {self.value}."


@dataclass(frozen=True)
class NeedleSample:
    length: int  # asked prompt length in tokens
    depth: float  # asked depth of the queried fact
    keys: int  # facts planted
    seed: int
    context: str  # the haystack with every fact planted, up to (not including) the query
    query: str  # the continuation cue: the queried fact's sentence without its value
    answer: str  # the digits the continuation must start with
    tokens: int  # measured prompt tokens (context + query)
    needle_token: int  # measured token index where the queried fact starts

    @property
    def prompt(self) -> str:
        return self.context + self.query

    def as_dict(self) -> dict:
        return asdict(self)


def prose_sentences(split: str = "eval", digits: bool = False) -> list[str]:
    """English prose of zoo:prose's `split` ("eval" or "calib"), one sentence each, in document order.

    The split lists a paragraph's sentences and then the paragraph itself; the paragraph (which
    contains the sentence just before it) is left out so no text repeats. `digits=False` also
    leaves out sentences with numbers (a needle haystack has no numbers beside the planted ones).
    """
    from tokcomp.zoo.eval_sets import evaluation_texts

    out: list[str] = []
    previous = None
    for text in evaluation_texts("en", split):
        paragraph = previous is not None and previous in text
        previous = text
        if not paragraph and (digits or not any(ch.isdigit() for ch in text)):
            out.append(text)
    return out


def held_out_sentences() -> list[str]:
    """The haystack: the evaluation split's sentences without numbers (see `prose_sentences`)."""
    return prose_sentences("eval")


def build_samples(
    tokenizer,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    samples: int = 4,
    keys: int = 1,
    seed: int = 0,
    sentences: Sequence[str] | None = None,
) -> list[NeedleSample]:
    """`samples` prompts for every (length, depth), `keys` facts each; deterministic in `seed`."""
    sentences = list(sentences) if sentences is not None else held_out_sentences()
    if keys < 1 or keys > len(NAMES):
        raise NeedleError(f"needle keys must be 1 to {len(NAMES)}, got {keys}", hint="plant fewer facts")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise NeedleError(f"needle depth {depth} is outside 0..1", hint="give depths as shares, e.g. 0.1 0.5 0.9")
    count = _token_counter(tokenizer)
    sizes = [count(" " + s, special=False) for s in sentences]
    out = []
    for length in lengths:
        for depth in depths:
            for index in range(samples):
                sample_seed = hash_seed(seed, length, depth, keys, index)
                out.append(_build(count, sentences, sizes, length, depth, keys, sample_seed))
    return out


def hash_seed(*parts) -> int:
    """A stable seed from the sample's coordinates (Python's hash() is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _build(count, sentences, sizes, length: int, depth: float, keys: int, seed: int) -> NeedleSample:
    rng = random.Random(seed)
    people = rng.sample(NAMES, keys)
    facts = [Fact(name, rng.choice(ITEMS), str(rng.randrange(10_000, 100_000))) for name in people]
    target = facts[0]
    query = " " + target.query  # the cue follows the last sentence like any other sentence
    fixed = count(query, special=True) + sum(count(" " + f.sentence, special=False) for f in facts)
    budget = length - fixed
    if budget < 8 * keys:
        raise NeedleError(f"a {length}-token needle prompt leaves no room for a haystack", hint="ask longer lengths")
    # Haystack: consecutive sentences from a seeded start (wrapping around), just under the budget.
    start = rng.randrange(len(sentences))
    chosen, used = [], 0
    while True:
        i = (start + len(chosen)) % len(sentences)
        if used + sizes[i] > budget or len(chosen) == len(sentences):
            break
        chosen.append(i)
        used += sizes[i]
    # Where each fact goes: before the sentence nearest its depth. Distractors first (by haystack tokens), then
    # the queried fact, counting the tokens of the distractors before it so its depth is of the whole prompt.
    running = [0]
    for i in chosen:
        running.append(running[-1] + sizes[i])
    fact_sizes = [count(" " + f.sentence, special=False) for f in facts]
    total = count("", special=True) + used + sum(fact_sizes) + count(query, special=False)
    slots = [0] + [_nearest(running, rng.uniform(0.05, 0.95) * used) for _ in facts[1:]]

    def start_of(slot: int) -> int:  # token index where the queried fact would start (placed first in its slot)
        before = sum(size for k, size in enumerate(fact_sizes) if k and slots[k] < slot)
        return count("", special=True) + running[slot] + before

    slots[0] = min(range(len(running)), key=lambda j: abs(start_of(j) - depth * total))
    pieces: list[str] = []
    for slot in range(len(chosen) + 1):
        pieces += [" " + facts[k].sentence for k in range(keys) if slots[k] == slot]
        if slot < len(chosen):
            pieces.append(" " + sentences[chosen[slot]])
    context = "".join(pieces).lstrip()
    # Measured, not estimated: the whole prompt, and where the queried fact starts in it.
    context, tokens = _trim_to(count, context, query, length)
    before = context[: context.index(target.sentence)].rstrip()
    needle_token = count(before, special=True) if before else count("", special=True)
    return NeedleSample(length, depth, keys, seed, context, query, target.value, tokens, needle_token)


def _nearest(running: list[int], tokens: float) -> int:
    return min(range(len(running)), key=lambda j: abs(running[j] - tokens))


def _trim_to(count, context: str, query: str, length: int) -> tuple[str, int]:
    """Drop trailing haystack sentences until context + query fits in `length` tokens (tokenizers merge
    across sentence boundaries, so the per-sentence estimate can be off by a few)."""
    tokens = count(context + query, special=True)
    while tokens > length:
        context = context[: context.rstrip().rfind(" ")]  # drop the last word; rare, a few tokens at most
        tokens = count(context + query, special=True)
    return context, tokens


def _token_counter(tokenizer) -> Callable[..., int]:
    def count(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special).input_ids)

    return count


_DIGITS = re.compile(r"\s*(\d+)")


def continuation_digits(text: str) -> str | None:
    """The digits a continuation starts with (after spaces), or None."""
    match = _DIGITS.match(text)
    return match[1] if match else None


def is_correct(sample: NeedleSample, continuation: str) -> bool:
    return continuation_digits(continuation) == sample.answer


def accuracy_table(samples: Sequence[NeedleSample], correct: Sequence[bool]) -> list[dict]:
    """[{"length", "depth", "n", "correct", "accuracy"}] per (length, depth), in the samples' order."""
    cells: dict[tuple[int, float], list[bool]] = {}
    for sample, ok in zip(samples, correct, strict=True):
        cells.setdefault((sample.length, sample.depth), []).append(bool(ok))
    return [
        {"length": length, "depth": depth, "n": len(hits), "correct": sum(hits), "accuracy": sum(hits) / len(hits)}
        for (length, depth), hits in cells.items()
    ]


def overall_accuracy(correct: Sequence[bool]) -> float:
    return sum(map(bool, correct)) / len(correct) if correct else float("nan")
