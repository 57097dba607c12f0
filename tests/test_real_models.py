"""The spine on real pretrained models from the zoo (DINOv2 ViT-S/14, MiniLM-L6)."""

import pytest
import torch

import tokcomp
from tokcomp.data import load_samples, make_batches
from tokcomp.fileio import read_json

pytestmark = pytest.mark.slow


def _image_batch(loaded, n=4):
    samples = load_samples("zoo:imagenet", "image", n)
    return next(make_batches(samples, loaded.processor, "image", n))


def test_dinov2_rewrite_is_exact_on_real_weights(dinov2):
    import copy

    batch = _image_batch(dinov2)
    model = copy.deepcopy(dinov2.model)
    with torch.no_grad():
        expected = dinov2.model(**batch).last_hidden_state
        tokcomp.apply(model, [{"type": "tome", "r": 0}], image_size=dinov2.input_spec.image_size)
        got = model(**batch).last_hidden_state
    assert (expected - got).abs().max().item() <= 1e-5


def test_dinov2_tome_beats_random_drop_at_equal_tokens(tmp_path, dinov2):
    out = tmp_path / "ckpt"
    tokcomp.compile(
        {
            "model": "zoo:dinov2-small",
            "passes": [{"type": "tome", "target_flops": "-35%"}],
            "evaluation": {"data": "zoo:images", "samples": 36},
        },
        out,
    )
    report = read_json(out / "report.json")
    assert report["input"]["image_size"] == 224
    assert report["tokens_per_layer"]["input"] == 257
    assert abs(report["flops"]["ratio"] - 0.65) < 0.02
    fidelity = report["fidelity"]
    assert fidelity["samples"] == 36
    assert fidelity["cosine_mean"] > fidelity["random_drop_baseline"]["cosine_mean"]
    assert fidelity["cosine_mean"] > 0.95

    reloaded = tokcomp.load(out)
    batch = _image_batch(dinov2, 2)
    with torch.no_grad():
        first = reloaded(**batch).last_hidden_state
        second = tokcomp.load(out)(**batch).last_hidden_state
    assert first.shape[1] == report["tokens_per_layer"]["compressed"][-1]
    assert torch.equal(first, second)


def test_minilm_tome_on_padded_sentences(tmp_path):
    out = tmp_path / "ckpt"
    tokcomp.compile(
        {
            "model": "zoo:minilm-l6",
            "passes": [{"type": "tome", "r": 4}],
            "evaluation": {"data": "zoo:text", "samples": 64, "batch_size": 16},
        },
        out,
    )
    report = read_json(out / "report.json")
    fidelity = report["fidelity"]
    assert fidelity["pooling"] == "mean"
    assert fidelity["cosine_mean"] > fidelity["random_drop_baseline"]["cosine_mean"]
    assert fidelity["cosine_mean"] > 0.9
    state = read_json(out / "tokcomp.json")
    assert state["base"]["pooling"] == "mean"
    assert state["passes"][0]["metadata"]["family"] == "bert"
