"""Op-count regression guard: aten ops of a tiny ToMe ViT's forward vs the original's (deterministic)."""

import copy

import torch
from transformers import ViTConfig, ViTModel

import tokcomp
from benchmarks.op_count import count_ops, launching

# Measured at the commit that added this test; raise only with a reason (each op is a GPU kernel launch).
MAX_LAUNCHING_RATIO = 4.8  # 132 -> 625 (4.73x) when added


def test_tiny_vit_tome_launching_ops_stay_bounded():
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64)
    original = ViTModel(config, add_pooling_layer=False).eval()
    compressed = tokcomp.apply(copy.deepcopy(original), [{"type": "tome", "r": 2}], image_size=64).eval()
    pixels = torch.randn(2, 3, 64, 64)
    before = launching(count_ops(lambda: original(pixel_values=pixels)))
    after = launching(count_ops(lambda: compressed(pixel_values=pixels)))
    assert before > 0 and after / before <= MAX_LAUNCHING_RATIO
