import os

import pytest
import torch

# Keep progress bars out of test logs.
os.environ.setdefault("TOKCOMP_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vision(kind: str):
    """Tiny random models of each vision family, for fast unit tests only."""
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTForImageClassification,
    )

    common = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=4)
    if kind == "vit":
        model = ViTForImageClassification(ViTConfig(intermediate_size=128, num_labels=10, **common))
    elif kind == "deit":
        model = DeiTForImageClassificationWithTeacher(DeiTConfig(intermediate_size=128, num_labels=10, **common))
    elif kind == "dinov2":
        model = Dinov2Model(Dinov2Config(layerscale_value=0.5, **common))
    else:
        raise ValueError(kind)
    return model.eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, vocab_size=200
    )
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    """A tiny random ViT classifier saved as a model folder (shared by the DiffRate tests)."""
    from transformers import ViTImageProcessor

    folder = tmp_path_factory.mktemp("tinyvit")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
