"""Calibration data: every source kind, augmentation, labels, batching, and the recipe's calibration keys."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tokcomp.data import load_samples, make_batches
from tokcomp.data.augment import augmented_views
from tokcomp.errors import RecipeError, TokcompError
from tokcomp.recipe import parse_recipe


def _image(seed, size=(40, 30)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for cls in ("cat", "dog"):
        (root / "classes" / cls).mkdir(parents=True)
        for i in range(3):
            _image(i + (10 if cls == "dog" else 0)).save(root / "classes" / cls / f"{i}.png")
    (root / "flat").mkdir()
    for i in range(4):
        _image(20 + i).save(root / "flat" / f"{i}.jpg")
    return root


def test_image_folder_with_classes_and_flat(folders):
    samples = load_samples(str(folders / "classes"), "image")
    assert [s.label for s in samples] == [0, 0, 0, 1, 1, 1]
    assert samples[3].name == "dog/0.png" and samples[0].value.mode == "RGB"
    flat = load_samples(str(folders / "flat"), "image", limit=2, seed=3)
    assert len(flat) == 2 and all(s.label is None for s in flat)
    assert [s.name for s in flat] == [s.name for s in load_samples(str(folders / "flat"), "image", limit=2, seed=3)]


def test_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = datasets.Dataset.from_dict(
        {"img": [_image(i) for i in range(5)], "label": [0, 1, 2, 1, 0]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}),
    )
    images.save_to_disk(str(tmp_path / "images"))
    samples = load_samples(str(tmp_path / "images"), "image", limit=3, seed=0)
    assert len(samples) == 3 and samples[0].value.size == (40, 30)
    assert sorted(s.label for s in load_samples(str(tmp_path / "images"), "image")) == [0, 0, 1, 1, 2]

    texts = datasets.Dataset.from_dict({"id": [1, 2], "sentence": ["a cat sat", "the dog ran"]})
    datasets.DatasetDict({"train": texts, "test": texts}).save_to_disk(str(tmp_path / "texts"))
    with pytest.raises(TokcompError, match="several splits \\(test, train\\)"):
        load_samples(str(tmp_path / "texts"), "text")
    assert [s.value for s in load_samples(str(tmp_path / "texts" / "train"), "text")] == ["a cat sat", "the dog ran"]


def test_parquet_text_and_images(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two", "three"], "label": [0, 1, 0]}), tmp_path / "t.parquet")
    texts = load_samples(str(tmp_path / "t.parquet"), "text")
    assert [(s.value, s.label) for s in texts] == [("one", 0), ("two", 1), ("three", 0)]

    encoded = []
    for i in range(2):
        buffer = io.BytesIO()
        _image(i).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"image": encoded}), tmp_path / "shards" / "part-0.parquet")
    pq.write_table(pa.table({"image": encoded[:1]}), tmp_path / "shards" / "part-1.parquet")
    images = load_samples(str(tmp_path / "shards"), "image")
    assert len(images) == 3 and images[0].value.size == (40, 30)

    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), tmp_path / "ambiguous.parquet")
    with pytest.raises(TokcompError, match="no image column and no single text column among columns a, b"):
        load_samples(str(tmp_path / "ambiguous.parquet"), "text")


def test_text_files(tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\nsecond line\n")
    assert [s.value for s in load_samples(str(tmp_path / "lines.txt"), "text")] == ["first line", "second line"]
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"text": "hello", "label": 2}) + "\n" + json.dumps({"text": "bye"}) + "\n"
    )
    rows = load_samples(str(tmp_path / "rows.jsonl"), "text")
    assert [(s.value, s.label) for s in rows] == [("hello", 2), ("bye", None)]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(TokcompError, match='bad.jsonl:1: the JSON object has no "text" field'):
        load_samples(str(tmp_path / "bad.jsonl"), "text")
    with pytest.raises(TokcompError, match="holds text samples but the model takes image"):
        load_samples(str(tmp_path / "lines.txt"), "image")


def test_zoo_groups_combine_and_stay_disjoint():
    calibration = load_samples("zoo:imagenet+cifar10+cifar100", "image")
    held_out = load_samples("zoo:skimage", "image")
    assert len(calibration) == 60 and len(held_out) == 16
    assert not {s.name for s in calibration} & {s.name for s in held_out}
    assert len(load_samples("zoo:images+imagenet", "image")) == 36  # no image twice
    with pytest.raises(TokcompError, match="unknown built-in data 'zoo:imagenet\\+mnist'"):
        load_samples("zoo:imagenet+mnist", "image")


def test_augmentation_draws_exact_seeded_views(folders):
    originals = load_samples(str(folders / "classes"), "image")
    views = augmented_views(originals, 14, seed=5)
    assert len(views) == 14
    sources = [v.name.split("#")[0] for v in views]
    assert all(sources.count(o.name) in (2, 3) for o in originals)  # every image used about equally
    assert [np.asarray(v.value).sum() for v in views] == [
        np.asarray(v.value).sum() for v in augmented_views(originals, 14, 5)
    ]
    assert {v.value.size for v in views} != {(40, 30)}  # crops, not copies
    labels = {v.name.split("#")[0]: v.label for v in views}
    assert labels == {o.name: o.label for o in originals}
    # Through load_samples, asking for more than the source holds.
    assert len(load_samples(str(folders / "flat"), "image", limit=10, augment=True)) == 10


def test_augmentation_is_for_images_only(tmp_path):
    (tmp_path / "lines.txt").write_text("a\nb\n")
    with pytest.raises(TokcompError, match="augment: true applies to image data only"):
        load_samples(str(tmp_path / "lines.txt"), "text", limit=4, augment=True)


def test_batches_with_labels_and_reference_padding(folders):
    from transformers import BertTokenizerFast, ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    samples = load_samples(str(folders / "classes"), "image")
    (batch,) = list(make_batches(samples, processor, "image", 8, labels=True))
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(TokcompError, match="has no label"):
        list(make_batches(load_samples(str(folders / "flat"), "image"), processor, "image", 8, labels=True))

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]
    tokenizer = _tokenizer(vocab, BertTokenizerFast)
    from tokcomp.data import Sample

    texts = [Sample("a b"), Sample("a")]
    (short,) = list(make_batches(texts, tokenizer, "text", 2, 16))
    (padded,) = list(make_batches(texts, tokenizer, "text", 2, 16, pad_to_length=True))
    assert short["input_ids"].shape == (2, 4) and padded["input_ids"].shape == (2, 16)
    assert torch.equal(padded["attention_mask"].sum(1), short["attention_mask"].sum(1))


def _tokenizer(vocab, cls):
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return cls(vocab_file=str(folder / "vocab.txt"))


@pytest.mark.parametrize(
    ("calibration", "expected"),
    [
        ("{data: x, forward_loop: 'f.py:run'}", "either 'data' or 'forward_loop'"),
        ("{forward_loop: 'f.py'}", "forward_loop must look like 'path/to/file.py:function'"),
        ("{augment: true, forward_loop: 'f.py:run'}", "'augment' applies to 'data'"),
        ("{samples: 8, shuffle: true}", "unknown key 'shuffle'"),
    ],
)
def test_calibration_keys_are_strict(calibration, expected):
    with pytest.raises(RecipeError) as err:
        parse_recipe(f"model: m\npasses: [{{type: tome, r: 1}}]\ncalibration: {calibration}\n", source="r.yaml")
    assert expected in str(err.value) and "calibration" in str(err.value)


def test_calibration_keys_parse():
    recipe = parse_recipe(
        "model: m\npasses: [{type: tome, r: 1}]\ncalibration: {data: zoo:imagenet, samples: 512, augment: true}\n"
    )
    spec = recipe.document.calibration
    assert (spec.data, spec.samples, spec.augment, spec.forward_loop) == ("zoo:imagenet", 512, True, None)
