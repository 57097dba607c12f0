"""The FLOPs counter reproduces the field's published baselines (DiffRate's convention)."""

import pytest
import torch

from tokcomp.analysis.flops import model_macs, resolve_flops_target
from tokcomp.errors import TokcompError
from tokcomp.surgery import find_adapter
from tokcomp.surgery.adapters.base import InputSpec


def _deit_shaped(hidden, heads):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=hidden, num_hidden_layers=12, num_attention_heads=heads, intermediate_size=4 * hidden,
        image_size=224, patch_size=16, num_labels=1000,
    )
    with torch.device("meta"):  # geometry only needs shapes
        return ViTForImageClassification(config)


@pytest.mark.parametrize(("hidden", "heads", "expected"), [(384, 6, 4.599), (768, 12, 17.564)])
def test_unreduced_deit_gmacs(hidden, heads, expected):
    model = _deit_shaped(hidden, heads)
    geometry = find_adapter(model).geometry(model, InputSpec("image", image_size=224))
    assert geometry.input_tokens == 197
    assert round(model_macs(geometry, [197] * 12) / 1e9, 3) == expected


def test_flops_target_forms():
    assert resolve_flops_target(0.5, 1000) == 500
    assert resolve_flops_target("-35%", 1000) == 650
    assert resolve_flops_target("2.9G", 1) == 2_900_000_000
    for bad in (1.5, 0, "half"):
        with pytest.raises(TokcompError):
            resolve_flops_target(bad, 1000)
