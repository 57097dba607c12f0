"""Count token ids on the corpus, apply the rule per language, add what must always stay.

Kept ids come from three places, reported separately:
  corpus   ids the rule selects, per language group, united
  always   added/special tokens, post-processor / padding / unk ids, ids named in the
           model's configs, keep_tokens, the tokenizer type's base alphabet, and (keep_symbols)
           tokens made only of ASCII digits, punctuation and whitespace
  parents  BPE parents of kept tokens (tokenizer_surgery.bpe_closure)
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tokcomp.errors import TokcompError
from tokcomp.progress import progress_bar
from tokcomp.vocab.config import SelectionRule
from tokcomp.vocab.corpus import CorpusPart
from tokcomp.vocab.tokenizer_json import TokenizerJson
from tokcomp.vocab.tokenizer_surgery import bpe_closure

BATCH = 20_000  # texts per encode_batch call: bounds memory, lets the progress bar move


@dataclass
class Counts:
    by_language: dict[str, np.ndarray]  # float64 over old ids
    chars: Counter  # character -> occurrences in the corpus texts (unweighted)
    texts: dict[str, int]  # texts counted per language


def plain_copy(tokenizer):
    """A copy of a `tokenizers.Tokenizer` without padding or truncation (which would distort counts)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def encode_ids(tokenizer, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each text with a `tokenizers.Tokenizer` (Rust, parallel)."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]


def count_tokens(tokenizer, parts: list[CorpusPart], size: int) -> Counts:
    """Weighted id counts per language group with `tokenizer` (a `tokenizers.Tokenizer`)."""
    tokenizer = plain_copy(tokenizer)
    by_language: dict[str, np.ndarray] = {}
    texts: dict[str, int] = {}
    chars: Counter = Counter()
    total = sum(len(p.texts) for p in parts)
    with progress_bar(transient=True) as bar:
        task = bar.add_task("counting corpus tokens", total=total, status="")
        for part in parts:
            counts = by_language.setdefault(part.language, np.zeros(size, dtype=np.float64))
            texts[part.language] = texts.get(part.language, 0) + len(part.texts)
            for start in range(0, len(part.texts), BATCH):
                chunk = part.texts[start : start + BATCH]
                chars.update("".join(chunk))
                ids = encode_ids(tokenizer, chunk)
                lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
                weights = None
                if part.counts is not None:
                    weights = np.repeat(np.asarray(part.counts[start : start + BATCH], dtype=np.float64), lengths)
                counts += np.bincount(flat, weights=weights, minlength=size)[:size]
                bar.advance(task, len(chunk))
    return Counts(by_language, chars, texts)


def apply_rule(counts: np.ndarray, rule: SelectionRule) -> np.ndarray:
    """Old ids the rule keeps from one language's counts (most frequent first)."""
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count, descending; ties by id
    order = order[counts[order] >= rule.min_freq]
    if rule.top_n is not None:
        order = order[: rule.top_n]
    elif rule.coverage is not None:
        total = counts.sum()
        covered = np.cumsum(counts[order]) / total if total > 0 else np.ones(len(order))
        order = order[: int(np.searchsorted(covered, rule.coverage - 1e-12)) + 1]
    return order


@dataclass
class Selection:
    kept: np.ndarray  # sorted old ids
    reasons: dict[str, int] = field(default_factory=dict)  # how many ids each source added (first come)
    per_language: dict[str, int] = field(default_factory=dict)


def select(
    spec: TokenizerJson,
    counts: Counts,
    rule: SelectionRule,
    config_ids: dict[str, list[int]],
    keep_tokens: Iterable[str],
    keep_symbols: bool = True,
) -> Selection:
    per_language = {lang: apply_rule(c, rule) for lang, c in counts.by_language.items()}
    corpus_ids = set().union(*(set(ids.tolist()) for ids in per_language.values()))
    always = set().union(*spec.protected_ids().values())
    for name, ids in config_ids.items():
        bad = [i for i in ids if i >= spec.size]
        if bad:
            raise TokcompError(
                f"{name} = {bad} lies outside the tokenizer's {spec.size} ids",
                hint="fix the model config before trimming",
            )
        always.update(ids)
    always |= _keep_token_ids(spec, keep_tokens)
    always |= spec.alphabet_ids(counts.chars)
    if keep_symbols:
        always |= spec.symbol_ids()
    kept = bpe_closure(spec, corpus_ids | always)
    kept_ids = np.array(sorted(i for i in kept if spec.tokens[i] is not None), dtype=np.int64)
    reasons = {
        "corpus": len(corpus_ids),
        "always": len(always - corpus_ids),
        "parents": len(kept - corpus_ids - always),
    }
    return Selection(kept_ids, reasons, {lang: len(ids) for lang, ids in per_language.items()})


def _keep_token_ids(spec: TokenizerJson, tokens: Iterable[str]) -> set[int]:
    tokens = list(tokens)
    missing = [t for t in tokens if t not in spec.ids]
    if missing:
        raise TokcompError(
            f"keep_tokens names tokens the tokenizer does not have: {missing[:10]}",
            hint="write tokens exactly as in tokenizer.json (e.g. '▁word' for SentencePiece, 'Ġword' for byte-level BPE)",
        )
    return {spec.ids[t] for t in tokens}
