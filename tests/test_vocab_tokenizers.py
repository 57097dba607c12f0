"""Vocabulary trimming at the tokenizer level: every `tokenizers` model type, trained here.

The training text is English prose from Python's own documentation (pydoc_data, part
of every Python), so these tests need no downloads. Half the sentences are the trim
corpus, the other half are held out.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tokcomp.errors import RecipeError, TokcompError
from tokcomp.vocab import trim_tokenizer
from tokcomp.vocab.config import SelectionRule, VocabTrimConfig
from tokcomp.vocab.corpus import SHARED, CorpusPart
from tokcomp.vocab.selection import count_tokens, encode_ids, select
from tokcomp.vocab.tokenizer_json import TokenizerJson
from tokcomp.vocab.tokenizer_surgery import load_checked, old_to_new, rewrite
from tokcomp.zoo.samples import english_prose

RUSSIAN = [
    "Москва — столица России и крупнейший город страны.",
    "Сегодня хорошая погода, и мы идём гулять в парк.",
    "Я люблю читать книги по вечерам.",
]
KINDS = ("bytelevel_bpe", "spiece_bpe", "unigram", "wordpiece")


def prose() -> tuple[list[str], list[str]]:
    """(corpus, held-out): alternate sentences of the Python reference documentation."""
    sentences = english_prose()
    return sentences[0::2], sentences[1::2]


# --------------------------------------------------------------------------- tokenizers trained here


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 2000) -> Tokenizer:
    """A small trained tokenizer of each `tokenizers` family, with its usual specials and post-processor."""
    if kind == "bytelevel_bpe":  # GPT-2 / RoBERTa style
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
        return tok
    if kind == "spiece_bpe":  # Llama / Gemma style: SentencePiece BPE with byte fallback
        return _spiece_bpe(texts, vocab_size)
    if kind == "unigram":  # T5 / XLM-R style
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
        return tok
    if kind == "wordpiece":  # BERT style
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
        return tok
    raise ValueError(kind)


def _spiece_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """Trained BPE, then laid out like Llama's tokenizer.json: specials, the 256 <0xXX> pieces, the rest."""
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"]))
    data = json.loads(trained.to_str())
    learned = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    ordered = [t for t, _ in learned[:3]] + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in learned[3:]]
    data["model"].update(vocab={t: i for i, t in enumerate(ordered)}, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    data["added_tokens"] = [dict(a, id=ordered.index(a["content"])) for a in data["added_tokens"]]
    data["decoder"] = json.loads(
        decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ).__getstate__()
    )
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    return prose()


@pytest.fixture(scope="module")
def tokenizers_by_kind(texts) -> dict[str, Tokenizer]:
    corpus, _ = texts
    return {kind: train_tokenizer(kind, corpus) for kind in KINDS}


def _round_trip(old: Tokenizer, new: Tokenizer, kept: np.ndarray, lines: list[str]) -> dict[str, int]:
    old2new = old_to_new(kept, old.get_vocab_size(with_added_tokens=True))
    stats = {"full": 0, "exact": 0, "partial": 0, "decode_equal": 0}
    for line in lines:
        before, after = old.encode(line).ids, new.encode(line).ids
        if all(old2new[i] >= 0 for i in before):
            stats["full"] += 1
            stats["exact"] += after == old2new[before].tolist()
        else:
            stats["partial"] += 1
            stats["decode_equal"] += new.decode(after) == old.decode(before)
    return stats


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_exact_on_held_out(kind, tokenizers_by_kind, texts) -> None:
    corpus, held_out = texts
    old = tokenizers_by_kind[kind]
    # top_n drops a real share of the vocabulary, so both branches below are exercised.
    new, kept = trim_tokenizer(old, corpus, SelectionRule(top_n=1000))
    assert len(kept) < old.get_vocab_size(with_added_tokens=True)
    assert new.get_vocab_size(with_added_tokens=True) == len(kept)
    stats = _round_trip(old, new, kept, held_out)
    assert stats["full"] > 0 and stats["exact"] == stats["full"], stats
    # Text that needs a removed token still encodes, to the same text (every base character was kept).
    assert stats["decode_equal"] == stats["partial"], stats


@pytest.mark.parametrize("kind", ["bytelevel_bpe", "spiece_bpe"])
def test_off_target_text_still_encodes_losslessly(kind, tokenizers_by_kind, texts) -> None:
    corpus, _ = texts
    old = tokenizers_by_kind[kind]
    new, kept = trim_tokenizer(old, corpus, SelectionRule(top_n=150))
    for line in RUSSIAN:
        before, after = old.encode(line, add_special_tokens=False), new.encode(line, add_special_tokens=False)
        assert new.decode(after.ids) == old.decode(before.ids) == line
        assert len(after.ids) >= len(before.ids)  # inflation, never loss


def test_bpe_parent_closure_is_needed(tokenizers_by_kind, texts) -> None:
    """Without the closure, held-out text tokenizes differently; with it, identically."""
    corpus, held_out = texts
    old = tokenizers_by_kind["spiece_bpe"]
    spec = TokenizerJson.parse(json.loads(old.to_str()))
    counts = count_tokens(old, [CorpusPart("prose", SHARED, corpus)], spec.size)
    rule = SelectionRule(top_n=800)
    selection = select(spec, counts, rule, {}, [])
    assert selection.reasons["parents"] > 0
    from tokcomp.vocab.selection import apply_rule

    no_closure = np.array(
        sorted(set(apply_rule(counts.by_language[SHARED], rule).tolist()) | set().union(*spec.protected_ids().values()) | spec.alphabet_ids(counts.chars))
    )
    broken = load_checked(rewrite(spec, no_closure), spec, no_closure)
    fixed = load_checked(rewrite(spec, selection.kept), spec, selection.kept)
    without = _round_trip(old, broken, no_closure, held_out)
    with_closure = _round_trip(old, fixed, selection.kept, held_out)
    assert without["exact"] < without["full"]
    assert with_closure["exact"] == with_closure["full"] > 0


def test_merges_filtered_in_order(tokenizers_by_kind, texts) -> None:
    old = tokenizers_by_kind["bytelevel_bpe"]
    new, kept = trim_tokenizer(old, texts[0], SelectionRule(top_n=100))
    old_merges = [tuple(m) for m in json.loads(old.to_str())["model"]["merges"]]
    new_merges = [tuple(m) for m in json.loads(new.to_str())["model"]["merges"]]
    kept_tokens = set(new.get_vocab())
    expected = [m for m in old_merges if m[0] in kept_tokens and m[1] in kept_tokens and m[0] + m[1] in kept_tokens]
    assert new_merges == expected and 0 < len(new_merges) < len(old_merges)
    # Every 256 byte-level symbol survives: any text stays encodable.
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= kept_tokens


def test_unigram_keeps_order_scores_and_unk(tokenizers_by_kind, texts) -> None:
    old = tokenizers_by_kind["unigram"]
    new, kept = trim_tokenizer(old, texts[0], SelectionRule(min_freq=5))
    old_model, new_model = json.loads(old.to_str())["model"], json.loads(new.to_str())["model"]
    expected = [old_model["vocab"][i] for i in kept]
    assert [piece for piece, _ in new_model["vocab"]] == [piece for piece, _ in expected]
    # tokenizers prints scores with one ulp of float64 noise; they are the original scores.
    np.testing.assert_allclose([s for _, s in new_model["vocab"]], [s for _, s in expected], rtol=1e-12)
    assert new_model["vocab"][new_model["unk_id"]][0] == "<unk>"


def test_post_processor_padding_and_added_tokens_remapped(texts) -> None:
    corpus, held_out = texts
    old = train_tokenizer("wordpiece", corpus)
    old.add_tokens(["<extra>"])  # an added token outside the model vocab: id = len(vocab)
    old.enable_padding(pad_id=old.token_to_id("[PAD]"), pad_token="[PAD]")
    new, kept = trim_tokenizer(old, corpus, SelectionRule(min_freq=5))
    old2new = old_to_new(kept, old.get_vocab_size(with_added_tokens=True))
    assert new.token_to_id("<extra>") == len(kept) - 1
    assert new.padding["pad_id"] == old2new[old.token_to_id("[PAD]")]
    pair_old = old.encode("the object", "a name <extra>").ids
    pair_new = new.encode("the object", "a name <extra>").ids
    assert pair_new == old2new[pair_old].tolist()
    processor = json.loads(new.to_str())["post_processor"]
    assert processor["cls"] == ["[CLS]", int(old2new[old.token_to_id("[CLS]")])]


def test_template_processing_ids_remapped(tokenizers_by_kind, texts) -> None:
    old = tokenizers_by_kind["spiece_bpe"]
    new, kept = trim_tokenizer(old, texts[0], SelectionRule(top_n=50))
    special = json.loads(new.to_str())["post_processor"]["special_tokens"]["<s>"]
    assert special["ids"] == [new.token_to_id("<s>")]


def test_keep_tokens_are_kept_and_unknown_ones_rejected(tokenizers_by_kind, texts) -> None:
    old = tokenizers_by_kind["unigram"]
    rare = next(t for t, i in sorted(old.get_vocab().items(), key=lambda kv: -kv[1]) if len(t) > 3)
    new, _ = trim_tokenizer(old, texts[0][:20], SelectionRule(), keep_tokens=[rare])
    assert new.token_to_id(rare) is not None
    with pytest.raises(TokcompError, match="keep_tokens names tokens the tokenizer does not have"):
        trim_tokenizer(old, texts[0][:20], SelectionRule(), keep_tokens=["no-such-token-xyz"])


def test_rules(tokenizers_by_kind, texts) -> None:
    from tokcomp.vocab.selection import apply_rule

    counts = np.array([0, 10, 5, 5, 1, 79], dtype=float)
    assert apply_rule(counts, SelectionRule()).tolist() == [5, 1, 2, 3, 4]
    assert apply_rule(counts, SelectionRule(min_freq=5)).tolist() == [5, 1, 2, 3]
    assert apply_rule(counts, SelectionRule(top_n=2)).tolist() == [5, 1]
    assert apply_rule(counts, SelectionRule(coverage=0.89)).tolist() == [5, 1]  # 89 of 100 tokens
    assert apply_rule(counts, SelectionRule(coverage=0.9)).tolist() == [5, 1, 2]


def test_counting_ignores_padding_and_truncation(tokenizers_by_kind) -> None:
    tok = Tokenizer.from_str(tokenizers_by_kind["wordpiece"].to_str())
    tok.enable_padding(length=64)
    tok.enable_truncation(max_length=2)
    counts = count_tokens(tok, [CorpusPart("x", SHARED, ["the object name"])], tok.get_vocab_size())
    plain = encode_ids(tokenizers_by_kind["wordpiece"], ["the object name"])[0]
    assert counts.by_language[SHARED].sum() == len(plain) == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"corpus": ["a.txt"], "rule": {"top_n": 5, "coverage": 0.9}}, "top_n or coverage, not both"),
        ({"corpus": ["zoo:wikipedia"]}, "unknown built-in corpus"),
        ({"corpus": ["zoo:wordfreq"]}, "needs a language"),
        ({"corpus": ["a.txt"], "targets": ["layer.0"]}, "does not select blocks"),
        ({"corpus": ["a.txt"], "rule": {"coverage": 1.5}}, "less than or equal to 1"),
        ({"corpus": ["a.txt"], "rules": {}}, "unknown key 'rules'"),
    ],
)
def test_config_errors(config, message) -> None:
    from tokcomp.recipe import parse_pass_list

    with pytest.raises(RecipeError, match=message):
        parse_pass_list([{"type": "vocab_trim", **config}])
    VocabTrimConfig.model_validate({"corpus": ["zoo:wordfreq:de"]})  # a language in the source is enough
