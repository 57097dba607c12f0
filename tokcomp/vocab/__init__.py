"""Vocabulary trimming: shrink a model's embedding and head to the tokens its languages use.

    corpus.py / wordlists.py   the text that is counted, grouped by language
    selection.py               counts -> kept ids (rule per language, always-kept ids, BPE parents)
    tokenizer_json.py          reading tokenizer.json of every `tokenizers` model type
    tokenizer_surgery.py       the trimmed tokenizer.json and transformers tokenizer
    model_surgery.py           slicing embeddings, heads and biases by tensor identity
    ids.py                     token ids named in configs
    checks.py                  the proofs: round-trip, logits, generation, structure
    trim.py                    all of it in order; the `vocab_trim` pass calls it
    vocab_map.py               the old -> new id map saved with the checkpoint
"""

# The pass registry first: tokcomp.passes imports the vocab_trim pass, which imports this package's
# config; entering here first would otherwise meet a half-initialised config module.
import tokcomp.passes  # noqa: F401
from tokcomp.vocab.config import VocabTrimConfig

# The rest imports torch and transformers: loaded on first use, so registering the pass
# (tokcomp.passes imports this package's config) stays cheap.
_LAZY = {
    "TrimResult": "tokcomp.vocab.trim",
    "trim_tokenizer": "tokcomp.vocab.trim",
    "trim_vocabulary": "tokcomp.vocab.trim",
    "VocabMap": "tokcomp.vocab.vocab_map",
    "load_vocab_map": "tokcomp.vocab.vocab_map",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokcomp.vocab' has no attribute {name!r}")


__all__ = ["TrimResult", "VocabMap", "VocabTrimConfig", "load_vocab_map", "trim_tokenizer", "trim_vocabulary"]
