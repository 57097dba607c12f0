"""tokcomp report: the HTML page renders in headless Chromium, and the merge maps show
exactly one outlined region per final token that covers at least one patch.

Merge-map inputs are solid-colour images: every region's inside is then that colour
and every outline a palette colour of its own, so the number of distinct colours in a
merge-map PNG minus one is the number of regions it shows.
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import tokcomp
from tests.conftest import tiny_vision
from tokcomp.errors import TokcompError
from tokcomp.surgery import capture_final_state
from tokcomp.visual import write_report
from tokcomp.visual.charts import COMPRESSED_COLOR, ORIGINAL_COLOR
from tokcomp.visual.merge_map import DROPPED, MergeMap, palette, patch_owners, render

SOLID = [(0, 0, 0), (255, 255, 255), (40, 90, 160)]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("report")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(root / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "model")
    (root / "solid").mkdir()
    for i, colour in enumerate(SOLID):
        Image.new("RGB", (32, 32), colour).save(root / "solid" / f"{i}.png")
    recipe = {
        "model": str(root / "model"),
        "passes": [{"type": "tome", "r": 6}],
        "evaluation": {"data": str(root / "solid"), "samples": 3, "batch_size": 3},
    }
    out = tokcomp.compile(recipe, root / "ckpt")
    # A benchmark file of a kind the report does not know: it must still appear, as key/value rows.
    (out / "bench_cpu.json").write_text('{"device": "cpu", "batch": 8, "speedup": 1.37, "latency_ms": [4.1, 3.0]}')
    return out


@pytest.fixture(scope="module")
def report(checkpoint):
    from tokcomp.cli import app

    result = CliRunner().invoke(app, ["report", str(checkpoint), "--data", str(checkpoint.parent / "solid")])
    assert result.exit_code == 0, result.output
    page = checkpoint / "report" / "report.html"
    assert result.stdout.strip().splitlines()[-1] == str(page.resolve())
    return page


def _expected_regions(checkpoint) -> list[int]:
    """Independently of the report code: final tokens whose source row covers a patch (column 0 is CLS)."""
    from transformers import ViTImageProcessor

    model = tokcomp.load(checkpoint)
    processor = ViTImageProcessor.from_pretrained(checkpoint)
    images = [Image.open(checkpoint.parent / "solid" / f"{i}.png").convert("RGB") for i in range(len(SOLID))]
    with torch.no_grad(), capture_final_state(model, trace_source=True) as states:
        model(**processor(images=images, return_tensors="pt"))
    return [int(n) for n in (states[-1].source[:, :, 1:].sum(-1) > 0).sum(-1)]


def test_merge_map_pngs_show_one_region_per_covering_token(report, checkpoint):
    expected = _expected_regions(checkpoint)
    assert all(0 < n < 64 for n in expected)  # r=6 merged patches: fewer regions than the 64 patches
    html = report.read_text()
    for index, (colour, regions) in enumerate(zip(SOLID, expected, strict=True), start=1):
        png = report.parent / f"merge_map_{index:02d}.png"
        assert png.stat().st_size > 0
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        colours = {tuple(c) for c in np.unique(pixels, axis=0)}
        assert colour in colours  # the regions' insides
        assert len(colours) - 1 == regions
        assert f"{regions} regions from 64 patches" in html


def test_page_is_self_contained_and_has_every_section(report):
    html = report.read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 2 + 2 * len(SOLID)  # two charts, then input + map per sample
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<script|<link|url\(|https?://", html)
    for title in (
        "Summary",
        "Tokens per layer",
        "FLOPs and parameters",
        "Fidelity to the original",
        "Results (bench_cpu.json)",
        "Merge maps",
    ):
        assert f"<h2>{title}</h2>" in html, title
    assert "<td>latency_ms</td><td>[4.1, 3]</td>" in html and "<td>speedup</td><td>1.37</td>" in html
    assert "<b>41</b><span>tokens after the last layer, from 65</span>" in html
    for name in ("tokens_per_layer.png", "flops_per_layer.png", "merge_maps.png"):
        with Image.open(report.parent / name) as image:
            assert image.width > 200 and image.height > 100


def test_existing_report_needs_force(report, checkpoint):
    stamp = report.stat().st_mtime_ns
    with pytest.raises(TokcompError, match="--force"):
        write_report(checkpoint, images=0)
    assert report.stat().st_mtime_ns == stamp
    page = write_report(checkpoint, checkpoint / "plain", force=True, images=0)
    assert "skipped (--images 0)" in page.read_text()


def _chromium() -> str:
    for candidate in (os.environ.get("TOKCOMP_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.skip(
        "headless Chromium not found (looked for $TOKCOMP_CHROMIUM, /usr/bin/chromium, chromium, chromium-browser): "
        "`apt-get install -y chromium`; `make test` installs it when run as root"
    )


def _near(pixels: np.ndarray, hex_colour: str, tolerance: int = 6) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - target).max(-1) <= tolerance).sum())


def test_page_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    command = [
        _chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,3000",
        f"--screenshot={shot}",
        report.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        pixels = np.asarray(image.convert("RGB"))
    # The chart colours only exist inside the inlined PNGs: seeing them means the images decoded and laid out.
    assert _near(pixels, COMPRESSED_COLOR) > 2000
    assert _near(pixels, ORIGINAL_COLOR) > 2000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text, charts and maps, not a blank page


def test_patch_owners_and_render_on_a_known_source_map():
    # CLS + a 2x2 grid; final tokens: CLS, one covering patches 0 and 3, one covering patch 1; patch 2 dropped.
    source = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0]])
    owners = patch_owners(source, (2, 2))
    assert owners.tolist() == [[1, 2], [DROPPED, 1]]
    merge_map = MergeMap("known", np.full((8, 8, 3), 128, np.uint8), owners, final_tokens=3)
    assert (merge_map.regions, merge_map.dropped, merge_map.patches) == (2, 1, 4)
    picture = render(merge_map, scale=4)
    assert picture.shape == (32, 32, 3)
    colours = {tuple(c) for c in np.unique(picture.reshape(-1, 3), axis=0)}
    outline = {tuple(c) for c in palette(3)[[1, 2]]}
    assert colours == {(128, 128, 128), (32, 32, 32)} | outline  # insides, the dimmed drop, two outlines


def test_palette_colours_are_distinct_and_never_dark():
    for n in (1, 2, 77, 257, 1000):
        colours = palette(n)
        assert len({tuple(c) for c in colours}) == n
        assert colours.max(-1).min() > 200  # outlines stay visible next to black or dimmed patches


@pytest.mark.slow
def test_dinov2_merge_maps_match_source_tracking(tmp_path):
    """zoo:dinov2-small with the quickstart's budget: captions give the regions that source tracking finds."""
    from tokcomp.data import load_samples
    from tokcomp.evaluation.models import load_processor
    from tokcomp.visual import build_page

    recipe = {
        "model": "zoo:dinov2-small",
        "passes": [{"type": "tome", "target_flops": "-38%"}],
        "evaluation": {"data": "zoo:imagenet", "samples": 1, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "dinov2")
    page = build_page(out, images=2, data="zoo:imagenet")
    samples = load_samples("zoo:imagenet", "image", 2, 0)  # the same seeded pick as the page's
    processor = load_processor(out, "image")
    model = tokcomp.load(out)
    with torch.no_grad(), capture_final_state(model, trace_source=True) as states:
        model(**processor(images=[s.value for s in samples], return_tensors="pt"))
    covering = (states[-1].source[:, :, 1:] > 0).any(-1).sum(-1).tolist()
    assert [m.regions for m in page.merge_maps] == covering
    assert [m.patches for m in page.merge_maps] == [256, 256]  # 224 px / 14 px patches
    for merge_map in page.merge_maps:
        assert f"{merge_map.regions} regions from 256 patches" in page.html
