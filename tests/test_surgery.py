"""Adapters: a rewritten model with nothing reduced computes exactly what the original does."""

import copy

import pytest
import torch

import tokcomp
from tests.conftest import tiny_bert, tiny_vision
from tokcomp.errors import UnsupportedModelError
from tokcomp.surgery import find_adapter, rewrite_blocks, supported_families, token_blocks


def _main_output(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2"])
@pytest.mark.parametrize("proportional", [False, True])
def test_vision_rewrite_with_r0_is_exact(family, proportional):
    model = tiny_vision(family)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = _main_output(model(pixel_values=pixels))
        tokcomp.apply(model, [{"type": "tome", "r": 0, "proportional_attention": proportional}])
        got = _main_output(model(pixel_values=pixels))
    assert len(token_blocks(model)) == 4
    assert (expected - got).abs().max().item() <= 1e-5


@pytest.mark.parametrize("proportional", [False, True])
def test_bert_rewrite_with_r0_is_exact_under_padding(proportional):
    model = tiny_bert()
    ids = torch.randint(5, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        tokcomp.apply(model, [{"type": "tome", "r": 0, "proportional_attention": proportional}])
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (expected[real] - got[real]).abs().max().item() <= 1e-5


def test_rewrite_keeps_state_dict_keys_and_training_mode():
    model = tiny_bert()
    keys = set(model.state_dict())
    rewritten = copy.deepcopy(model)
    blocks = rewrite_blocks(rewritten, find_adapter(rewritten))
    assert set(rewritten.state_dict()) == keys
    assert all(not b.training for b in blocks)


def test_timm_vit_rewrite_is_exact():
    timm = pytest.importorskip("timm", reason="timm is an optional extra (needs a working torchvision)")
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3, init_values=0.1, qk_norm=True
    ).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels)
        tokcomp.apply(model, [{"type": "tome", "r": 0}])
        got = model(pixels)
    assert (expected - got).abs().max().item() <= 1e-5


def test_unsupported_model_lists_supported_families():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(UnsupportedModelError) as err:
        tokcomp.apply(model, [{"type": "tome", "r": 2}])
    message = str(err.value)
    assert "gpt2" in message
    for family in ("vit", "deit", "dinov2", "bert", "timm-vit"):
        assert family in message
    assert supported_families() in message
