"""Merge maps: which input patches each final token stands for (ToMe's visualisation).

The compressed model runs with source tracking on, so its last block reports a map
[N', N0] from final tokens to input tokens. Every patch is owned by the final token
that covers it most (one token for merging; none when a pruning reducer dropped it).
A region is the set of patches one final token owns. The picture paints each
region's inside with the region's mean colour, its outline in a colour of its own,
and dropped patches dimmed, so the number of outline colours is the number of
regions, which is the number of final tokens that cover at least one patch.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from tokcomp.data import Sample, make_batches
from tokcomp.surgery import capture_final_state

DROPPED = -1  # owner of a patch no final token covers
DROPPED_BRIGHTNESS = 0.25  # dropped patches keep a dim trace of the image
TARGET_SIDE = 448  # pictures are scaled up by a whole factor to about this many pixels
MAX_PREFIX_TOKENS = 16  # CLS, distillation and register tokens; more means the grid guess is wrong


@dataclass(frozen=True)
class MergeMap:
    name: str
    image: np.ndarray  # [H, W, 3] uint8: the model's actual input (resized, cropped), un-normalised
    owners: np.ndarray  # [grid_h, grid_w] int: final token owning each patch, DROPPED if none
    final_tokens: int  # tokens leaving the last block, prefix tokens included

    @property
    def regions(self) -> int:
        return int(np.unique(self.owners[self.owners != DROPPED]).size)

    @property
    def patches(self) -> int:
        return int(self.owners.size)

    @property
    def dropped(self) -> int:
        return int((self.owners == DROPPED).sum())


def patch_owners(source: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """source [N', N0] (prefix tokens first, then patches row by row) -> owner of every patch [gh, gw]."""
    patches = grid[0] * grid[1]
    prefix = source.shape[-1] - patches
    if not 0 <= prefix <= MAX_PREFIX_TOKENS:
        raise ValueError(f"{source.shape[-1]} input tokens do not fit a {grid[0]}x{grid[1]} patch grid")
    cover = source[:, prefix:].float()
    owners = cover.argmax(0)
    owners[cover.max(0).values <= 0] = DROPPED
    return owners.reshape(grid).cpu().numpy().astype(np.int64)


def palette(n: int) -> np.ndarray:
    """n outline colours [n, 3] uint8: evenly spaced hues, shuffled so neighbouring token ids differ.

    Hues 1/n apart stay distinct after rounding to 8 bits for n up to about 1,200; none is dark,
    so outlines never blend with dropped or black patches.
    """
    step = max(1, round(n * 0.382))
    while math.gcd(step, n) != 1:
        step += 1
    hues = ((np.arange(n) * step) % n) / max(n, 1)
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], dtype=np.uint8)


def _interior(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels at least `width` steps from another region or the picture's border (binary erosion)."""
    inner = np.ones(labels.shape, dtype=bool)
    height, breadth = labels.shape
    for _ in range(width):
        padded_labels = np.pad(labels, 1, constant_values=DROPPED - 1)
        padded_inner = np.pad(inner, 1, constant_values=False)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = (slice(dy, dy + height), slice(dx, dx + breadth))
            inner &= (padded_labels[neighbour] == labels) & padded_inner[neighbour]
    return inner


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, 0), factor, 1)


def scale_for(image: np.ndarray) -> int:
    return max(1, round(TARGET_SIDE / max(image.shape[:2])))


def render(merge_map: MergeMap, scale: int | None = None) -> np.ndarray:
    """The merge map picture [H*scale, W*scale, 3] uint8."""
    grid_h, grid_w = merge_map.owners.shape
    patch_h, patch_w = merge_map.image.shape[0] // grid_h, merge_map.image.shape[1] // grid_w
    scale = scale or scale_for(merge_map.image)
    image = upscale(merge_map.image[: grid_h * patch_h, : grid_w * patch_w], scale).astype(np.float64)
    labels = np.repeat(np.repeat(merge_map.owners, patch_h * scale, 0), patch_w * scale, 1)
    inner = _interior(labels, max(1, min(patch_h, patch_w) * scale // 12))
    out = image * DROPPED_BRIGHTNESS
    owned = labels != DROPPED
    ids = labels[owned]
    count = np.bincount(ids, minlength=merge_map.final_tokens).clip(min=1)
    means = np.stack(
        [np.bincount(ids, weights=image[..., c][owned], minlength=merge_map.final_tokens) / count for c in range(3)],
        axis=-1,
    )
    colours = palette(merge_map.final_tokens)
    out[owned & inner] = means[labels[owned & inner]]
    out[owned & ~inner] = colours[labels[owned & ~inner]]
    return out.round().clip(0, 255).astype(np.uint8)


def side_by_side(maps: Sequence[MergeMap], columns: int = 2, gap: int = 8, scale: int | None = None) -> np.ndarray:
    """A grid of (input | merge map) pairs on white, for one picture in the README."""
    pairs = []
    for merge_map in maps:
        factor = scale or scale_for(merge_map.image)
        rendered = render(merge_map, factor)
        shown = upscale(merge_map.image, factor)[: rendered.shape[0], : rendered.shape[1]]
        spacer = np.full((rendered.shape[0], gap // 2, 3), 255, np.uint8)
        pairs.append(np.concatenate([shown, spacer, rendered], axis=1))
    height = max(p.shape[0] for p in pairs)
    width = max(p.shape[1] for p in pairs)
    rows = -(-len(pairs) // columns)
    canvas = np.full((rows * (height + gap) - gap, columns * (width + 2 * gap) - 2 * gap, 3), 255, np.uint8)
    for index, pair in enumerate(pairs):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + 2 * gap)
        canvas[top : top + pair.shape[0], left : left + pair.shape[1]] = pair
    return canvas


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def patch_size(model: nn.Module) -> int | None:
    """Patch side in pixels: Hugging Face config.patch_size, or timm's patch_embed.patch_size."""
    size = getattr(getattr(model, "config", None), "patch_size", None)
    if size is None:
        size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else None


def model_input_image(pixels: Tensor, processor) -> np.ndarray:
    """Undo the processor's normalisation: [3, H, W] float -> [H, W, 3] uint8 as the model saw it."""
    x = pixels.detach().float().cpu().numpy().transpose(1, 2, 0)
    if getattr(processor, "do_normalize", False):
        x = x * np.asarray(processor.image_std) + np.asarray(processor.image_mean)
    if getattr(processor, "do_rescale", False):
        x = x / processor.rescale_factor
    return x.round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def trace_merge_maps(model: nn.Module, samples: Sequence[Sample], processor, batch_size: int = 8) -> list[MergeMap]:
    """Run the compressed vision model with source tracking and map its final tokens onto patches."""
    size = patch_size(model)
    if size is None:
        raise ValueError(f"cannot find the patch size of {type(model).__name__}")
    maps: list[MergeMap] = []
    for start, batch in zip(range(0, len(samples), batch_size), make_batches(samples, processor, "image", batch_size)):
        with capture_final_state(model, trace_source=True) as states:
            model(**batch)
        source, pixels = states[-1].source, batch["pixel_values"]
        grid = (pixels.shape[-2] // size, pixels.shape[-1] // size)
        for offset, sample in enumerate(samples[start : start + batch_size]):
            maps.append(
                MergeMap(
                    sample.name or f"sample {start + offset}",
                    model_input_image(pixels[offset], processor),
                    patch_owners(source[offset], grid),
                    int(source.shape[1]),
                )
            )
    return maps
