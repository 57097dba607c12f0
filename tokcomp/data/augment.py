"""Light image augmentation for tiny calibration sets: random resized crops and flips.

A search over a few dozen images would fit those images; drawing hundreds of random
views (as in standard ImageNet training: area 35-100%, aspect ratio 3/4-4/3, horizontal
flip half the time) gives it varied inputs. Seeded: the same seed gives the same views.
The model's own processor resizes the crops afterwards.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from PIL import Image

from tokcomp.data.sources import Sample

CROP_AREA = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_TRIES = 10


def random_resized_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop covering CROP_AREA of the image with an aspect ratio in CROP_RATIO.

    After _TRIES draws that do not fit inside the image, the largest centred crop
    with a ratio in range is taken (the usual rule of this augmentation).
    """
    width, height = image.size
    area = width * height
    for _ in range(_TRIES):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h))
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def augmented_views(samples: Sequence[Sample], count: int, seed: int) -> list[Sample]:
    """`count` random views; every source image is used as evenly as possible."""
    rng = random.Random(seed)
    views = []
    for round_start in range(0, count, len(samples)):
        order = rng.sample(range(len(samples)), len(samples))
        for index in order[: count - round_start]:
            source = samples[index]
            image = random_resized_crop(source.value, rng)
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            views.append(Sample(image, source.label, f"{source.name}#view{len(views)}"))
    return views
