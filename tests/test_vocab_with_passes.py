"""vocab_trim and a long-prompt pass in one recipe: the checkpoint reloads trimmed and compressed.

A tiny random Llama with a trained tokenizer (tests/test_vocab_models.py) is compiled with
[vocab_trim, fastv]. At keep 1.0 the result equals the trimmed-only checkpoint (logits and greedy
generation with the KV cache); at keep 0.5 the prefill drops half of each prompt's reducible
tokens, so the cache is shorter. The real-model recipe is recipes/vocab_trim_fastv_gemma_en.yaml.
"""

from __future__ import annotations

import pytest
import torch

import tokcomp
from tests.test_vocab_models import _model_folder
from tests.test_vocab_tokenizers import prose
from tokcomp.fileio import read_json

SINK, QUESTION = 2, 4


def _recipe(folder, corpus_file, passes: list[dict]) -> dict:
    trim = {
        "type": "vocab_trim",
        "languages": ["en"],
        "corpus": [str(corpus_file)],
        "rule": {"top_n": 700},
        "checks": {"held_out": [str(corpus_file)], "generate_prompts": 2, "max_new_tokens": 4},
    }
    return {"model": {"source": str(folder), "sequence_length": 64}, "passes": [trim, *passes], "evaluation": False}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    corpus, held_out = prose()
    root = tmp_path_factory.mktemp("vocab_fastv")
    corpus_file = root / "corpus.txt"
    corpus_file.write_text("\n".join(corpus))
    folder, _, _ = _model_folder("llama-tied", root, corpus)
    fastv = {"type": "fastv", "layer": 1, "sink": SINK, "question": QUESTION}
    outs = {}
    for name, passes in {"trim": [], "keep1": [{**fastv, "keep": 1.0}], "keep05": [{**fastv, "keep": 0.5}]}.items():
        outs[name] = tokcomp.compile(_recipe(folder, corpus_file, passes), root / name)
    return outs, held_out


def _prompt(out, held_out) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    return tokenizer(" ".join(held_out[:6]), return_tensors="pt")


def test_both_passes_are_recorded_and_the_vocabulary_is_trimmed(checkpoints):
    outs, _ = checkpoints
    report = read_json(outs["keep05"] / "report.json")
    assert report["passes"] == ["vocab_trim", "fastv"]
    assert report["vocab_trim"]["vocab"]["trimmed"] < report["vocab_trim"]["vocab"]["original"]


def test_full_keep_equals_the_trimmed_only_checkpoint_with_and_without_cache(checkpoints):
    outs, held_out = checkpoints
    trimmed, composed = tokcomp.load(outs["trim"]), tokcomp.load(outs["keep1"])
    inputs = _prompt(outs["trim"], held_out)
    assert inputs["input_ids"].shape[1] > SINK + QUESTION + 8
    with torch.no_grad():
        assert (composed(**inputs).logits - trimmed(**inputs).logits).abs().max() <= 1e-5
        expected = trimmed.generate(**inputs, max_new_tokens=8, do_sample=False)
        assert torch.equal(composed.generate(**inputs, max_new_tokens=8, do_sample=False), expected)


def test_half_keep_prefills_a_shorter_cache_and_still_generates(checkpoints):
    outs, held_out = checkpoints
    model = tokcomp.load(outs["keep05"])
    inputs = _prompt(outs["keep05"], held_out)
    tokens = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    reducible = tokens - SINK - QUESTION
    lengths = [layer.keys.shape[2] for layer in out.cache.layers]
    assert lengths[0] == tokens and lengths[1] == tokens - (reducible - round(reducible * 0.5))
    assert generated.shape[1] == tokens + 4
