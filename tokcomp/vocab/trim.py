"""trim_vocabulary: corpus -> kept ids -> trimmed tokenizer -> trimmed model, checked on the way.

The reference outputs of the checks are taken from the model before its surgery, so no
copy of the original model is ever needed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from tokcomp.errors import TokcompError
from tokcomp.progress import info, step
from tokcomp.vocab import checks
from tokcomp.vocab.config import SelectionRule, VocabTrimConfig
from tokcomp.vocab.corpus import SHARED, CorpusPart, load_corpus
from tokcomp.vocab.ids import config_token_ids
from tokcomp.vocab.model_surgery import slice_model, vocab_rows
from tokcomp.vocab.selection import count_tokens, select
from tokcomp.vocab.speech import tokenizer_of, with_tokenizer
from tokcomp.vocab.tokenizer_json import TokenizerJson
from tokcomp.vocab.tokenizer_surgery import load_checked, old_to_new, rebuild_processor, rewrite


@dataclass
class TrimResult:
    tokenizer: Any  # the trimmed transformers tokenizer (a processor of the same class when given one)
    old_ids: np.ndarray  # new id -> old id
    old_size: int  # ids of the original tokenizer
    report: dict[str, Any]


def tokenizer_json(processor) -> dict[str, Any]:
    backend = getattr(processor, "backend_tokenizer", None)
    if backend is None:
        raise TokcompError(
            f"vocab_trim needs a fast (tokenizers-backed) tokenizer; the model's is {type(processor).__name__}",
            hint="save the model with a tokenizer.json, e.g. AutoTokenizer.from_pretrained(..., use_fast=True)",
        )
    return json.loads(backend.to_str())


def trim_vocabulary(model: nn.Module, processor, config: VocabTrimConfig) -> TrimResult:
    """Trim `model` in place to the vocabulary `config` selects; return the trimmed tokenizer and report."""
    started = time.perf_counter()
    params_before = _count_params(model)
    old_rows = vocab_rows(model)
    outer, processor = processor, tokenizer_of(processor)  # Whisper: the tokenizer inside its processor
    spec = TokenizerJson.parse(tokenizer_json(processor))
    with step("vocab_trim: reading the corpus and counting its tokens"):
        corpus = load_corpus(config)
        counts = count_tokens(processor.backend_tokenizer, corpus.parts, spec.size)
    selection = select(spec, counts, config.rule, config_token_ids(model), config.keep_tokens, config.keep_symbols)
    kept = selection.kept
    info(f"vocab_trim: keeping {len(kept)} of {spec.size} tokens ({selection.reasons})")
    new_data = rewrite(spec, kept)
    load_checked(new_data, spec, kept)
    new_processor = rebuild_processor(processor, new_data, spec, kept)
    selected_at = time.perf_counter()

    old2new = old_to_new(kept, spec.size)
    new_spec = TokenizerJson.parse(new_data)
    unk = (spec.unk_id, new_spec.unk_id)
    with step("vocab_trim: checking the trimmed tokenizer on held-out and off-target text"):
        held_out = checks.Encoded.of(corpus.held_out, processor, new_processor)
        in_language = checks.tokenizer_stats(held_out, old2new, processor, new_processor, unk, strict=True)
        off = checks.Encoded.of(corpus.off_target, processor, new_processor) if corpus.off_target else None
        off_target = checks.tokenizer_stats(off, old2new, processor, new_processor, unk, strict=True) if off else None
    if config.checks.min_coverage is not None and in_language["token_coverage"] < config.checks.min_coverage:
        raise TokcompError(
            f"held-out token coverage {in_language['token_coverage']:.4f} is below checks.min_coverage "
            f"{config.checks.min_coverage}",
            hint="keep more tokens (a larger top_n or coverage), or add text like the held-out text to the corpus",
        )
    pad_old, pad_new = _pad_ids(model, spec, old2new)
    with step("vocab_trim: slicing the model and checking its outputs against the original's"):
        reference = checks.take_reference(model, held_out, kept, old2new, pad_old, config.checks)
        checked_at = time.perf_counter()
        tensors = slice_model(model, kept, old2new)
        surgery_done = time.perf_counter()
        model_checks = checks.compare_with_reference(model, reference, pad_new, config.checks)
    model_checks["structure"] = checks.structure(model, old_rows, new_spec, spec)
    params_after = _count_params(model)
    report = {
        "languages": config.languages,
        "corpus": {
            "parts": [{"source": p.name, "language": p.language, "texts": len(p.texts)} for p in corpus.parts],
            "counted_tokens": {lang: float(c.sum()) for lang, c in counts.by_language.items()},
        },
        "rule": config.rule.model_dump(exclude_none=True),
        "vocab": {
            "tokenizer_type": spec.kind + (" (byte-level)" if spec.byte_level else "") + (" (byte fallback)" if spec.byte_fallback else ""),
            "original": spec.size,
            "trimmed": len(kept),
            "model_rows_original": old_rows,
            "kept_by_reason": selection.reasons,
            "selected_per_language": selection.per_language,
        },
        "params": {
            "original": params_before,
            "trimmed": params_after,
            "ratio": params_after / params_before,
        },
        "tensors": [{"role": t.role, "names": t.names, "shape": list(t.tensor.shape)} for t in tensors],
        "checks": {
            "held_out": {"source": corpus.held_out_source, **in_language},
            "off_target": {"source": corpus.off_target_source, **off_target} if off_target else None,
            **model_checks,
        },
        "seconds": {
            "selection_and_tokenizer": round(selected_at - started, 2),
            "model_surgery": round(surgery_done - checked_at, 2),
            "checks": round(checked_at - selected_at + time.perf_counter() - surgery_done, 2),
            "total": round(time.perf_counter() - started, 2),
        },
    }
    return TrimResult(with_tokenizer(outer, new_processor), kept, spec.size, report)


def _pad_ids(model: nn.Module, spec: TokenizerJson, old2new: np.ndarray) -> tuple[int, int]:
    """A padding id for the check batches (masked out, so any kept id works): pad, else eos, else 0."""
    for candidate in (model.config.pad_token_id, getattr(getattr(model, "generation_config", None), "pad_token_id", None), model.config.eos_token_id, 0):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int) and 0 <= candidate < spec.size and old2new[candidate] >= 0:
            return candidate, int(old2new[candidate])
    raise TokcompError("no kept token to pad the check batches with", hint="please report this as a tokcomp bug")


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def trim_tokenizer(tokenizer, texts: list[str], rule: SelectionRule | None = None, keep_tokens=(), keep_symbols=True):
    """Tokenizer-only trim of a `tokenizers.Tokenizer` to the ids `texts` use; returns (new tokenizer, kept old ids).

    The same selection (rule, always-kept ids, BPE parents) and rewrite as trim_vocabulary, for
    tokenizers that have no model attached.
    """
    spec = TokenizerJson.parse(json.loads(tokenizer.to_str()))
    counts = count_tokens(tokenizer, [CorpusPart("texts", SHARED, list(texts))], spec.size)
    selection = select(spec, counts, rule or SelectionRule(), {}, keep_tokens, keep_symbols)
    return load_checked(rewrite(spec, selection.kept), spec, selection.kept), selection.kept
