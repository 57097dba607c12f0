"""Merge maps for speech: which encoder positions each final token of a reduced Whisper encoder stands for.

The picture is the clip's log-mel spectrogram as the encoder saw it (the whole 30 s window,
low frequencies at the bottom); each encoder position covers 2 mel frames (20 ms). Under
it, a strip shows the regions: the positions one final token owns, each region in a colour
of its own (neighbours always differ), positions no token covers in black. Long bars are
where the reducer merged (typically the silence after a short clip); thin stripes are
positions that kept a token of their own. (Image merge maps outline each region instead;
at 2 frames a position, outlines would hide the spectrogram.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.surgery import capture_final_state
from tokcomp.visual.merge_map import DROPPED, MergeMap, palette, patch_owners

ROWS_PER_MEL_BIN = 3  # 80 mel bins -> 240 pixels: tall enough to read next to a 3,000-frame width
STRIP_ROWS = 24  # the region strip under the spectrogram
GAP_ROWS = 3


def spectrogram_image(features: torch.Tensor) -> np.ndarray:
    """[mels, frames] log-mel -> [mels * ROWS_PER_MEL_BIN, frames, 3] uint8 grey, low frequencies at the bottom."""
    x = features.detach().float().cpu().numpy()[::-1]
    low, high = float(x.min()), float(x.max())
    grey = ((x - low) / max(high - low, 1e-6) * 255).round().astype(np.uint8)
    grey = np.repeat(grey, ROWS_PER_MEL_BIN, axis=0)
    return np.repeat(grey[..., None], 3, axis=2)


@torch.no_grad()
def trace_speech_maps(model: nn.Module, clips: Sequence[SpeechClip], processor) -> list[MergeMap]:
    """Run the reduced encoder with source tracking on each clip and map its final tokens onto positions."""
    features = processor.feature_extractor(
        [clip.audio for clip in clips], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features.to(model.device, model.dtype)
    with capture_final_state(model, trace_source=True) as states:
        model.get_encoder()(features)
    source = states[-1].source
    positions = source.shape[-1]
    return [
        MergeMap(
            clip.name,
            spectrogram_image(features[index]),
            patch_owners(source[index], (1, positions)),
            int(source.shape[1]),
        )
        for index, clip in enumerate(clips)
    ]


def render_speech(merge_map: MergeMap) -> np.ndarray:
    """Spectrogram over the region strip, [rows, frames, 3] uint8 (module docstring)."""
    owners = merge_map.owners.reshape(-1)
    frames = merge_map.image.shape[1]
    per_position = frames // len(owners)
    # Regions numbered in time order, so the shuffled palette gives neighbours different colours.
    order = {int(owner): index for index, owner in enumerate(dict.fromkeys(owners[owners != DROPPED].tolist()))}
    colours = palette(max(len(order), 2))
    strip = np.zeros((len(owners), 3), np.uint8)
    for position, owner in enumerate(owners.tolist()):
        if owner != DROPPED:
            strip[position] = colours[order[owner]]
    strip = np.repeat(strip, per_position, axis=0)[None].repeat(STRIP_ROWS, axis=0)
    gap = np.full((GAP_ROWS, frames, 3), 255, np.uint8)
    return np.concatenate([merge_map.image[:, : strip.shape[1]], gap, strip], axis=0)


def section(folder, clips: int, data: str | None, seed: int, pngs: dict[str, bytes]):
    """The report's "Merge maps" section for a speech checkpoint: `clips` clips of `data` (default zoo:librivox)."""
    from transformers import AutoProcessor

    from tokcomp.checkpoint import open_checkpoint
    from tokcomp.evaluation.speech_eval import load_speech_data
    from tokcomp.surgery import token_blocks
    from tokcomp.visual import html
    from tokcomp.visual.merge_map import png_bytes

    title, anchor = "Merge maps", "merge-maps"
    if clips <= 0:
        return html.Section(title, html.note("skipped (--images 0)."), anchor)
    model = open_checkpoint(folder).model.eval()
    if not token_blocks(model):
        return html.Section(title, html.note("no token reduction pass: every position stays its own token."), anchor)
    name, chosen = load_speech_data(data, clips, seed)
    maps = trace_speech_maps(model, chosen, AutoProcessor.from_pretrained(str(folder)))
    figures = []
    for index, (merge_map, clip) in enumerate(zip(maps, chosen, strict=True), start=1):
        png = pngs[f"speech_merge_map_{index:02d}.png"] = png_bytes(render_speech(merge_map))
        caption = (
            f"{clip.name} ({clip.seconds:.1f} s of the 30 s window): {merge_map.patches} positions, "
            f"{merge_map.regions} regions ({merge_map.final_tokens} final tokens)"
        )
        figures.append(
            f"<figure>{html.img(png, f'merge map {clip.name}')}<figcaption>{html.esc(caption)}</figcaption></figure>"
        )
    intro = html.paragraph(
        f"Clips of {name}. Top: the log-mel spectrogram the encoder saw (the whole 30 s window, low frequencies at "
        "the bottom). Bottom: each run of one colour is the encoder positions (20 ms each) one final token stands for."
    )
    return html.Section(title, intro + "".join(figures), anchor)
