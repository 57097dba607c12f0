"""Vocabulary trimming of real models from the zoo, through the shipped recipes.

zoo:gemma-3-270m (BPE with byte fallback, tied head) to English, zoo:multilingual-e5-small
(Unigram, feature model) to German + French, zoo:minilm-l6 (WordPiece) to English. Each
compile runs the pass's own checks (which fail the compile on any mismatch); these tests
assert the issue's claims on the report and reload the output with tokcomp.load and with
AutoModel / AutoTokenizer. The first run builds the zoo models once (Gemma's GGUF takes a
few minutes); later runs reuse the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tokcomp
from tokcomp.fileio import read_json
from tokcomp.recipe import load_recipe
from tokcomp.vocab import load_vocab_map
from tokcomp.zoo import pull
from tokcomp.zoo.samples import chatterbot_texts, english_prose

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _compile(recipe: str | dict, out: Path) -> tuple[Path, dict]:
    tokcomp.compile(load_recipe(RECIPES / recipe) if isinstance(recipe, str) else recipe, out)
    return out, read_json(out / "report.json")["vocab_trim"]


def _fully_kept(tokenizer, texts: list[str], old2new: np.ndarray) -> list[str]:
    return [t for t, ids in zip(texts, tokenizer(texts)["input_ids"]) if all(old2new[i] >= 0 for i in ids)]


# --------------------------------------------------------------------------- Gemma-3-270M -> English


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return _compile("vocab_trim_gemma_en.yaml", tmp_path_factory.mktemp("gemma") / "en")


def test_gemma_english_size_coverage_and_checks(gemma):
    _, report = gemma
    checks = report["checks"]
    held_out = checks["held_out"]
    assert report["params"]["ratio"] <= 0.65
    assert held_out["source"] == "zoo:pydocs" and held_out["token_coverage"] >= 0.97
    assert held_out["round_trip_mismatches"] == 0 and held_out["round_trip_exact"] == held_out["texts_fully_kept"] > 500
    # Lines that need a removed token still encode (byte fallback), to the same text, a little longer.
    assert held_out["texts_needing_removed_tokens"] > 0
    assert held_out["inflation_on_those"] > 1 and held_out["decode_equal_on_those"] == 1.0
    assert checks["logits"]["max_abs_diff"] <= 1e-5
    assert checks["generation"] == {"prompts": 20, "max_new_tokens": 16, "identical": 20}
    off = checks["off_target"]
    assert off["inflation_overall"] > 1 and off["unk_rate_trimmed"] == 0.0 and off["decode_equal_on_those"] == 1.0
    trim_seconds = report["seconds"]["selection_and_tokenizer"] + report["seconds"]["model_surgery"]
    assert trim_seconds < 120, report["seconds"]


def test_gemma_reloads_tied_and_equal(gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = gemma
    original_dir = pull("zoo:gemma-3-270m")
    old_tokenizer = AutoTokenizer.from_pretrained(original_dir)
    new_tokenizer = AutoTokenizer.from_pretrained(out)
    vocab_map = load_vocab_map(out)
    texts = _fully_kept(old_tokenizer, english_prose()[:40], vocab_map.old_to_new)[:3]
    assert texts
    old_ids = old_tokenizer(texts, return_tensors="pt", padding=True)
    new_ids = new_tokenizer(texts, return_tensors="pt", padding=True)
    assert torch.equal(new_ids["input_ids"], torch.from_numpy(vocab_map.old_to_new[old_ids["input_ids"].numpy()]))
    original = AutoModelForCausalLM.from_pretrained(original_dir, dtype=torch.float32).eval()
    kept = torch.from_numpy(vocab_map.old_ids)
    with torch.inference_mode():
        expected = original(**old_ids).logits[..., kept]
        del original
        for model in (tokcomp.load(out), AutoModelForCausalLM.from_pretrained(out).eval()):
            assert model.lm_head.weight is model.model.embed_tokens.weight
            assert model.config.vocab_size == report["vocab"]["trimmed"]
            got = model(**new_ids).logits
            mask = new_ids["attention_mask"].bool()
            assert (got[mask] - expected[mask]).abs().max() <= 1e-5
    files = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "vocab_map.safetensors", "generation_config.json"} <= files
    assert not files & {"tokenizer.model", "vocab.txt", "merges.txt"}


# --------------------------------------------------------------------------- multilingual-e5-small -> German + French


@pytest.fixture(scope="module")
def e5(tmp_path_factory):
    return _compile("vocab_trim_e5_de_fr.yaml", tmp_path_factory.mktemp("e5") / "de_fr")


def test_e5_german_french_coverage_and_embeddings(e5):
    _, report = e5
    checks = report["checks"]
    assert report["languages"] == ["de", "fr"]
    assert set(report["vocab"]["selected_per_language"]) == {"de", "fr"}
    assert checks["held_out"]["token_coverage"] >= 0.97
    assert checks["held_out"]["round_trip_mismatches"] == 0
    assert checks["embeddings"]["min_cosine"] >= 0.99999
    assert checks["embeddings"]["texts"] == checks["held_out"]["texts_fully_kept"] > 300
    assert report["params"]["ratio"] < 0.5
    # Cyrillic is not a target script and Unigram has no byte fallback: the unknown-token rate is the price.
    assert checks["off_target"]["unk_rate_trimmed"] > checks["off_target"]["unk_rate_original"]


def test_e5_reloads_with_automodel(e5):
    from transformers import AutoModel, AutoTokenizer

    out, _ = e5
    original_dir = pull("zoo:multilingual-e5-small")
    old_tokenizer, new_tokenizer = AutoTokenizer.from_pretrained(original_dir), AutoTokenizer.from_pretrained(out)
    vocab_map = load_vocab_map(out)
    texts = _fully_kept(old_tokenizer, chatterbot_texts("de")[:20] + chatterbot_texts("fr")[:20], vocab_map.old_to_new)
    assert len(texts) > 20

    def embed(model, tokenizer):
        batch = tokenizer([f"passage: {t}" for t in texts], padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    expected = embed(AutoModel.from_pretrained(original_dir).eval(), old_tokenizer)
    for model in (AutoModel.from_pretrained(out).eval(), tokcomp.load(out)):
        assert float((embed(model, new_tokenizer) * expected).sum(-1).min()) >= 0.99999


# --------------------------------------------------------------------------- MiniLM-L6 (WordPiece) -> English


def test_minilm_wordpiece_round_trip(tmp_path):
    from transformers import AutoTokenizer

    recipe = {
        "model": "zoo:minilm-l6",
        "passes": [
            {
                "type": "vocab_trim",
                "languages": ["en"],
                "corpus": ["zoo:wordfreq", "zoo:chatterbot"],
                "wordfreq": {"words": 20000},
                "rule": {"top_n": 8000},
                "checks": {"held_out": ["zoo:pydocs"]},
            }
        ],
    }
    out, report = _compile(recipe, tmp_path / "minilm")
    held_out = report["checks"]["held_out"]
    assert held_out["round_trip_mismatches"] == 0 and held_out["round_trip_exact"] == held_out["texts_fully_kept"] > 100
    assert report["vocab"]["trimmed"] < 0.5 * report["vocab"]["original"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == report["vocab"]["trimmed"]
    # transformers 5 saves WordPiece as tokenizer.json only; a vocab.txt, if any, must be the trimmed one.
    vocab_txt = out / "vocab.txt"
    assert not vocab_txt.exists() or len(vocab_txt.read_text(encoding="utf-8").splitlines()) == len(tokenizer)
    vocab_map = load_vocab_map(out)
    old = AutoTokenizer.from_pretrained(pull("zoo:minilm-l6"))
    for text in _fully_kept(old, english_prose()[:50], vocab_map.old_to_new):
        assert tokenizer(text)["input_ids"] == vocab_map.old_to_new[old(text)["input_ids"]].tolist()

