"""The checks that prove a trim correct; each returns report numbers, a failure raises.

    tokenizer_stats   id round-trip on held-out text (exact where every old id is kept),
                      coverage, inflation and unknown-token rate where it is not
    Reference         model outputs before the surgery (logits on kept tokens, pooled
                      embeddings, greedy generation restricted to kept tokens) compared
                      with the trimmed model's afterwards
    structure         no untrimmed vocabulary tensor, every config id in range, no
                      unreachable BPE token
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import LogitsProcessor

from tokcomp.errors import TokcompError
from tokcomp.vocab.config import CheckSettings
from tokcomp.vocab.ids import config_token_ids
from tokcomp.vocab.model_surgery import leftover_vocab_tensors
from tokcomp.vocab.speech import check_features, reads_features
from tokcomp.vocab.tokenizer_json import TokenizerJson

EMBEDDING_MIN_COSINE = 0.99999
BATCH = 4


# --------------------------------------------------------------------------- tokenizer


@dataclass
class Encoded:
    texts: list[str]
    old: list[list[int]]  # original tokenizer, with special tokens
    new: list[list[int]]
    old_content: list[list[int]]  # without special tokens
    new_content: list[list[int]]

    @classmethod
    def of(cls, texts: list[str], old_processor, new_processor) -> Encoded:
        def ids(processor, special: bool) -> list[list[int]]:
            return processor(texts, add_special_tokens=special)["input_ids"]

        return cls(texts, ids(old_processor, True), ids(new_processor, True), ids(old_processor, False), ids(new_processor, False))

    def fully_kept(self, old2new: np.ndarray) -> list[int]:
        return [i for i, ids in enumerate(self.old) if ids and all(old2new[j] >= 0 for j in ids)]


def tokenizer_stats(
    encoded: Encoded, old2new: np.ndarray, old_processor, new_processor, unk_ids: tuple[int | None, int | None], strict: bool
) -> dict[str, Any]:
    """Round-trip, coverage, inflation, unknown-token and decode statistics; strict: fail on a round-trip miss."""
    full = encoded.fully_kept(old2new)
    mismatched = [i for i in full if encoded.new[i] != old2new[encoded.old[i]].tolist()]
    if strict and mismatched:
        i = mismatched[0]
        raise TokcompError(
            f"id round-trip failed on {len(mismatched)} of {len(full)} held-out texts whose tokens were all kept, "
            f"e.g. {encoded.texts[i][:80]!r}: expected {old2new[encoded.old[i]].tolist()[:12]}, got {encoded.new[i][:12]}",
            hint="please report this as a tokcomp bug with the model's tokenizer.json",
        )
    old_tokens = sum(len(x) for x in encoded.old_content)
    kept_tokens = sum(int((old2new[np.asarray(x, dtype=np.int64)] >= 0).sum()) for x in encoded.old_content if x)
    full_set = set(full)
    partial = [i for i in range(len(encoded.texts)) if i not in full_set]
    old_unk, new_unk = unk_ids
    stats: dict[str, Any] = {
        "texts": len(encoded.texts),
        "tokens": old_tokens,
        "token_coverage": kept_tokens / old_tokens if old_tokens else 1.0,
        "texts_fully_kept": len(full),
        "round_trip_exact": len(full) - len(mismatched),
        "round_trip_mismatches": len(mismatched),
        "texts_needing_removed_tokens": len(partial),
        "inflation_on_those": _ratio(encoded.new_content, encoded.old_content, partial),
        "inflation_overall": _ratio(encoded.new_content, encoded.old_content, range(len(encoded.texts))),
        "unk_rate_original": _rate(encoded.old_content, old_unk),
        "unk_rate_trimmed": _rate(encoded.new_content, new_unk),
    }
    same = sum(
        new_processor.decode(encoded.new_content[i]) == old_processor.decode(encoded.old_content[i]) for i in partial
    )
    stats["decode_equal_on_those"] = same / len(partial) if partial else 1.0
    return stats


def _ratio(new: list[list[int]], old: list[list[int]], rows) -> float | None:
    rows = list(rows)
    before = sum(len(old[i]) for i in rows)
    return sum(len(new[i]) for i in rows) / before if before else None


def _rate(sequences: list[list[int]], unk: int | None) -> float:
    total = sum(len(x) for x in sequences)
    if unk is None or not total:
        return 0.0
    return sum(x.count(unk) for x in sequences) / total


# --------------------------------------------------------------------------- model outputs


class _KeepOnly(LogitsProcessor):
    """The original model may only pick kept tokens: every other logit becomes -inf."""

    def __init__(self, kept: np.ndarray, rows: int) -> None:
        self.mask = torch.full((rows,), float("-inf"))
        self.mask[torch.from_numpy(kept)] = 0.0

    def __call__(self, input_ids, scores):
        return scores + self.mask[: scores.shape[-1]].to(scores.dtype)


def _is_generator(model: nn.Module) -> bool:
    return bool(getattr(model, "can_generate", lambda: False)()) and model.get_output_embeddings() is not None


@dataclass
class Reference:
    """Outputs of the original model, taken before the surgery, and the inputs that made them."""

    kind: str  # "logits" or "embedding"
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)  # inputs in new ids
    outputs: list[torch.Tensor] = field(default_factory=list)
    prompts: dict[str, torch.Tensor] | None = None
    generated: torch.Tensor | None = None  # old model's output, mapped to new ids


@torch.inference_mode()
def take_reference(
    model: nn.Module, encoded: Encoded, kept: np.ndarray, old2new: np.ndarray, pad_id: int, settings: CheckSettings
) -> Reference:
    full = encoded.fully_kept(old2new)
    kept_index = torch.from_numpy(kept)
    has_head = model.get_output_embeddings() is not None
    reference = Reference("logits" if has_head else "embedding")
    # Feature models are cheap and the embedding claim is about every fully kept text; heads cost V per token.
    rows = full[: settings.logits_texts] if has_head else full
    for start in range(0, len(rows), BATCH):
        old_ids = [encoded.old[i][: settings.max_length] for i in rows[start : start + BATCH]]
        batch = _padded(old_ids, pad_id, left=False)
        out = _forward(model, batch)
        if has_head:
            mask = batch["attention_mask"].bool()
            reference.outputs.append(out.logits[mask][:, kept_index].float().clone())
        else:
            reference.outputs.append(_mean_pool(out.last_hidden_state, batch["attention_mask"]))
        reference.batches.append(_to_new(batch, old2new))
    if _is_generator(model) and settings.generate_prompts:
        decoder_only = not model.config.is_encoder_decoder
        prompt_ids = [encoded.old[i][: min(12, settings.max_length)] for i in full[: settings.generate_prompts]]
        if prompt_ids:
            prompts = _padded(prompt_ids, pad_id, left=decoder_only)
            out = _generate(model, prompts, pad_id, settings, _KeepOnly(kept, model.get_output_embeddings().weight.shape[0]))
            reference.prompts = _to_new(prompts, old2new)
            reference.generated = torch.from_numpy(old2new[out.numpy()])
    return reference


@torch.inference_mode()
def compare_with_reference(
    model: nn.Module, reference: Reference, new_pad_id: int, settings: CheckSettings
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if reference.kind == "logits":
        diff, tokens = 0.0, 0
        for batch, expected in zip(reference.batches, reference.outputs):
            logits = _forward(model, batch).logits[batch["attention_mask"].bool()].float()
            if logits.shape != expected.shape:
                raise TokcompError(f"trimmed logits have shape {tuple(logits.shape)}, expected {tuple(expected.shape)}")
            diff = max(diff, float((logits - expected).abs().max()))
            tokens += logits.shape[0]
        result["logits"] = {"texts": sum(len(b["input_ids"]) for b in reference.batches), "tokens": tokens, "max_abs_diff": diff}
        if diff > settings.logits_atol:
            raise TokcompError(
                f"logits on kept tokens differ from the original by {diff:.3g} (allowed {settings.logits_atol:g}) "
                f"over {tokens} tokens",
                hint="please report this as a tokcomp bug with the model's config.json",
            )
    else:
        cosines = [
            torch.nn.functional.cosine_similarity(_mean_pool(_forward(model, b).last_hidden_state, b["attention_mask"]), e)
            for b, e in zip(reference.batches, reference.outputs)
        ]
        low = float(torch.cat(cosines).min()) if cosines else 1.0
        result["embeddings"] = {"texts": sum(len(c) for c in cosines), "pooling": "mean", "min_cosine": low}
        if low < EMBEDDING_MIN_COSINE:
            raise TokcompError(
                f"pooled embeddings of fully kept texts differ from the original (min cosine {low:.7f} < {EMBEDDING_MIN_COSINE})",
                hint="please report this as a tokcomp bug with the model's config.json",
            )
    if reference.prompts is not None:
        out = _generate(model, reference.prompts, new_pad_id, settings, None)
        same = (out.shape == reference.generated.shape) and bool((out == reference.generated).all())
        rows_equal = int((out == reference.generated).all(dim=1).sum()) if out.shape == reference.generated.shape else 0
        result["generation"] = {
            "prompts": len(reference.prompts["input_ids"]),
            "max_new_tokens": settings.max_new_tokens,
            "identical": rows_equal,
        }
        if not same:
            raise TokcompError(
                f"greedy generation differs from the original restricted to kept tokens on "
                f"{len(out) - rows_equal} of {len(out)} prompts",
                hint="please report this as a tokcomp bug with the model's config.json",
            )
    return result


def _padded(sequences: list[list[int]], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _to_new(batch: dict[str, torch.Tensor], old2new: np.ndarray) -> dict[str, torch.Tensor]:
    new_ids = torch.from_numpy(old2new[batch["input_ids"].numpy()])
    if (new_ids < 0).any():
        raise TokcompError("a reference input uses a dropped token", hint="please report this as a tokcomp bug")
    return {"input_ids": new_ids, "attention_mask": batch["attention_mask"].clone()}


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]):
    inputs = dict(batch)
    if reads_features(model):
        # Speech: fixed features for the encoder, the text (special prefix included) for the decoder.
        inputs = {"input_features": check_features(model, len(batch["input_ids"]))}
    if model.config.is_encoder_decoder:
        # Any valid decoder input exercises the head; the text itself is one.
        inputs["decoder_input_ids"] = batch["input_ids"]
        inputs["decoder_attention_mask"] = batch["attention_mask"]
    return model(**inputs)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def _generate(model: nn.Module, prompts: dict[str, torch.Tensor], pad_id: int, settings: CheckSettings, keep_only):
    from transformers import LogitsProcessorList

    processors = LogitsProcessorList([keep_only]) if keep_only is not None else LogitsProcessorList()
    generate = model.generate
    if reads_features(model):
        from transformers import GenerationMixin

        # Whisper's own generate builds its prompt from language and task; the generic one continues
        # the given decoder prompt (suppress lists of the generation config still apply).
        features = check_features(model, len(prompts["input_ids"]))
        prompts = {"input_features": features, "decoder_input_ids": prompts["input_ids"]}
        generate = functools.partial(GenerationMixin.generate, model)
    out = generate(
        **prompts,
        do_sample=False,
        num_beams=1,
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=pad_id,
        logits_processor=processors,
    )
    return out.cpu()


# --------------------------------------------------------------------------- structure


def structure(model: nn.Module, old_rows: int, new_spec: TokenizerJson, old_spec: TokenizerJson) -> dict[str, Any]:
    rows = model.get_input_embeddings().weight.shape[0]
    problems = []
    leftovers = leftover_vocab_tensors(model, old_rows) if old_rows != rows else []
    if leftovers:
        problems.append(f"untrimmed vocabulary tensors: {leftovers[:5]}")
    out_of_range = {name: ids for name, ids in config_token_ids(model).items() if any(i >= rows for i in ids)}
    if out_of_range:
        problems.append(f"config ids outside the {rows}-token vocabulary: {out_of_range}")
    if new_spec.size != rows:
        problems.append(f"the tokenizer has {new_spec.size} ids but the model {rows} embedding rows")
    unreachable = unreachable_bpe_tokens(old_spec, new_spec)
    if unreachable:
        problems.append(f"{len(unreachable)} BPE tokens lost their merge path, e.g. {unreachable[:5]}")
    if problems:
        raise TokcompError("trimmed model failed its structural checks: " + "; ".join(problems))
    return {
        "untrimmed_vocab_tensors": 0,
        "config_ids_in_range": True,
        "tokenizer_ids_equal_model_rows": True,
        "unreachable_bpe_tokens": 0,
    }


def unreachable_bpe_tokens(old_spec: TokenizerJson, new_spec: TokenizerJson) -> list[str]:
    """Kept tokens that a merge produced in the original but no kept merge produces now."""
    if old_spec.kind != "BPE":
        return []
    kept = set(new_spec.ids)
    before = {old_spec.merge_result(a, b) for a, b in old_spec.merges()}
    after = {new_spec.merge_result(a, b) for a, b in new_spec.merges()}
    return sorted(t for t in (before & kept) - after)
