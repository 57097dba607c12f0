import os
import shutil

# Without a GPU the Triton kernels run in Triton's interpreter, which must be chosen before triton is
# first imported; installed packages (sentence-transformers' stack) may import it while pytest starts.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Keep progress bars out of test logs.
os.environ.setdefault("TOKCOMP_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Real zoo models, loaded once per test session. Tests that rewrite one take a deepcopy.
@pytest.fixture(scope="session")
def dinov2():
    from tokcomp.sources import load_model

    return load_model("zoo:dinov2-small")


@pytest.fixture(scope="session")
def minilm():
    from tokcomp.sources import load_model

    return load_model("zoo:minilm-l6")


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
def tiny_vit_with_images(tmp_path_factory):
    """A tiny random ViT classifier (65 tokens) saved as model/, and four random images in images/."""
    import numpy as np
    from PIL import Image
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("family")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(root / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "model")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return root


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


def state_of(size, real=None, protected: int = 1, source: bool = True):
    """A TokenState for reducer unit tests: given sizes [B, N], optional real flags, leading protected tokens."""
    from tokcomp.surgery.state import TokenState

    size = torch.as_tensor(size, dtype=torch.float32)
    batch, tokens = size.shape
    real = None if real is None else torch.as_tensor(real).bool()
    positions = torch.arange(tokens)
    return TokenState(
        size=size,
        real=real,
        protected=(positions < protected).expand(batch, tokens),
        position=positions.expand(batch, tokens),
        source=torch.eye(tokens).expand(batch, tokens, tokens) * (1 if real is None else real[..., None]) if source else None,
    )


def rate_at(removed: int, tokens: int, protected: int = 1):
    """The Rate that removes exactly `removed` of `tokens` tokens entering a layer (as r did)."""
    from tokcomp.reducers.rate import Rate

    return Rate(removed, tokens - protected)
