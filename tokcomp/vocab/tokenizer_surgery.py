"""Rewrite tokenizer.json to a kept set of old ids, and rebuild the transformers tokenizer from it.

New id = rank of the old id among the kept ids, so order is preserved and low special
ids stay put. BPE additionally needs its parent closure (bpe_closure) before the
rewrite: a kept token is only reachable if the two tokens its merge joins are kept.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tokcomp.errors import TokcompError
from tokcomp.vocab.tokenizer_json import TokenizerJson, remap_post_processor

# Slow-tokenizer files that would keep the full vocabulary next to the trimmed tokenizer.json.
STALE_FILES = (
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model",
    "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
)  # fmt: skip
_REPORT = "please report this as a tokcomp bug with the model's tokenizer.json"


def bpe_closure(spec: TokenizerJson, kept: set[int]) -> set[int]:
    """Kept ids plus, repeated until stable, both parents of every merge whose result is kept."""
    if spec.kind != "BPE":
        return set(kept)
    kept_tokens = {spec.tokens[i] for i in kept if spec.tokens[i] is not None}
    merges = [(a, b, spec.merge_result(a, b)) for a, b in spec.merges()]
    changed = True
    while changed:
        changed = False
        # Later merges build on earlier ones: walking backwards settles most chains in one sweep.
        for left, right, result in reversed(merges):
            if result in kept_tokens and (left not in kept_tokens or right not in kept_tokens):
                kept_tokens.update((left, right))
                changed = True
    missing = sorted(t for t in kept_tokens if t not in spec.ids)
    if missing:
        raise TokcompError(f"BPE merges name tokens missing from the vocabulary: {missing[:5]}", hint=_REPORT)
    return {spec.ids[t] for t in kept_tokens}


def old_to_new(kept_ids: np.ndarray, old_size: int) -> np.ndarray:
    """int64 array over old ids: new id, or -1 for a dropped id."""
    table = np.full(old_size, -1, dtype=np.int64)
    table[kept_ids] = np.arange(len(kept_ids), dtype=np.int64)
    return table


def rewrite(spec: TokenizerJson, kept_ids: np.ndarray) -> dict[str, Any]:
    """The trimmed tokenizer.json as a dict (the input is not modified)."""
    old2new = old_to_new(kept_ids, spec.size)
    kept_tokens = {spec.tokens[i] for i in kept_ids}
    model = dict(spec.model)
    if spec.kind == "Unigram":
        vocab = spec.model["vocab"]
        model["vocab"] = [vocab[i] for i in kept_ids if i < spec.model_size]
        if model.get("unk_id") is not None:
            model["unk_id"] = int(old2new[model["unk_id"]])
    else:
        model["vocab"] = {spec.tokens[i]: int(old2new[i]) for i in kept_ids if i < spec.model_size}
    if spec.kind == "BPE":
        # A merge survives iff both parents and its result survive; rank order is kept.
        model["merges"] = [
            raw
            for raw, (left, right) in zip(spec.model.get("merges") or [], spec.merges())
            if left in kept_tokens and right in kept_tokens and spec.merge_result(left, right) in kept_tokens
        ]
    data = dict(spec.data)
    data["model"] = model
    added = [dict(a, id=int(old2new[a["id"]])) for a in spec.data.get("added_tokens") or []]
    # tokenizers gives an added token outside the model vocab the next free id in list order: keep it sorted.
    data["added_tokens"] = sorted(added, key=lambda a: a["id"])
    data["post_processor"] = remap_post_processor(spec.data.get("post_processor"), old2new)
    if isinstance(spec.data.get("padding"), dict) and spec.data["padding"].get("pad_id") is not None:
        data["padding"] = dict(spec.data["padding"], pad_id=int(old2new[spec.data["padding"]["pad_id"]]))
    return data


def load_checked(data: dict[str, Any], spec: TokenizerJson, kept_ids: np.ndarray):
    """A `tokenizers.Tokenizer` from the rewritten JSON, checked token by token against the id map."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    except BaseException as exc:  # a BPE merge naming a missing token panics in Rust (PanicException)
        raise TokcompError(f"the trimmed tokenizer.json does not load: {str(exc)[:200]}", hint=_REPORT) from None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    wrong = [
        (spec.tokens[old], new, vocab.get(spec.tokens[old]))
        for new, old in enumerate(kept_ids.tolist())
        if vocab.get(spec.tokens[old]) != new
    ]
    if wrong or sorted(vocab.values()) != list(range(len(kept_ids))):
        raise TokcompError(
            f"trimmed tokenizer ids are not the planned contiguous 0..{len(kept_ids) - 1}: "
            f"{len(wrong)} tokens moved, e.g. (token, planned, actual) {wrong[:3]}",
            hint=_REPORT,
        )
    return tokenizer


def rebuild_processor(processor, data: dict[str, Any], spec: TokenizerJson, kept_ids: np.ndarray):
    """A transformers tokenizer of the same class that reads the trimmed tokenizer.json.

    The original is saved to a scratch folder, its tokenizer.json replaced, the slow files
    that would still list the full vocabulary deleted (vocab.txt is regenerated for
    WordPiece, vocab.json + merges.txt for BPE), id-keyed entries of tokenizer_config.json
    remapped, and the folder reopened with AutoTokenizer.
    """
    from transformers import AutoTokenizer

    old2new = old_to_new(kept_ids, spec.size)
    with tempfile.TemporaryDirectory(prefix="tokcomp-vocab-") as tmp:
        folder = Path(tmp)
        processor.save_pretrained(str(folder))
        present = {name for name in STALE_FILES if (folder / name).is_file()}
        for name in present:
            (folder / name).unlink()
        (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        _write_slow_vocab(folder, data, present)
        _remap_tokenizer_config(folder / "tokenizer_config.json", old2new)
        try:
            new = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as exc:
            raise TokcompError(f"the trimmed tokenizer does not reopen: {exc}", hint=_REPORT) from None
    backend = getattr(new, "backend_tokenizer", None)
    expected = {spec.tokens[old]: new_id for new_id, old in enumerate(kept_ids.tolist())}
    if backend is None or backend.get_vocab(with_added_tokens=True) != expected:
        raise TokcompError(f"{type(new).__name__} did not take the trimmed vocabulary", hint=_REPORT)
    return new


def _write_slow_vocab(folder: Path, data: dict[str, Any], present: set[str]) -> None:
    """Regenerate the plain-text vocabulary files a tokenizer class may read besides tokenizer.json."""
    model = data["model"]
    if "vocab.txt" in present and model["type"] == "WordPiece":
        ordered = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in ordered), encoding="utf-8")
    if "vocab.json" in present and model["type"] == "BPE":
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    if "merges.txt" in present and model["type"] == "BPE":
        lines = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(line + "\n" for line in lines), encoding="utf-8")


def _remap_tokenizer_config(path: Path, old2new: np.ndarray) -> None:
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        config["added_tokens_decoder"] = {str(int(old2new[int(k)])): v for k, v in decoder.items()}
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
