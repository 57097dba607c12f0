"""Built-in evaluation sets: deterministic disjoint splits, Debian/Qt carriers, prose extraction, real data."""

import io
import struct
import tarfile
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tokcomp.data.sources import catalogue_of
from tokcomp.errors import TokcompError, ZooError
from tokcomp.zoo import eval_sets
from tokcomp.zoo.debs import extract_deb_members
from tokcomp.zoo.qt_resources import rcc_files

# ------------------------------------------------------------------ splits


def test_split_is_a_stable_quarter_of_names():
    names = [f"source/item{i}.jpg" for i in range(20_000)]
    splits = [eval_sets.split_of(n) for n in names]
    assert splits == [eval_sets.split_of(n) for n in names]  # deterministic
    share = Counter(splits)["calib"] / len(names)
    assert abs(share - eval_sets.CALIBRATION_SHARE) < 0.015
    # the split of a name never depends on which other names exist
    assert [eval_sets.split_of(n) for n in names[::7]] == splits[::7]


def test_unknown_split_is_refused():
    with pytest.raises(ZooError, match="unknown split"):
        eval_sets.photo_entries("train")
    with pytest.raises(ZooError, match="unknown split"):
        eval_sets.evaluation_texts("en", "test")


def test_unknown_text_language_is_refused():
    with pytest.raises(ZooError, match="no evaluation texts"):
        eval_sets.evaluation_texts("klingon")


def test_unknown_zoo_set_argument_is_refused():
    with pytest.raises(TokcompError, match="unknown built-in data"):
        catalogue_of("zoo:photos:en")


# ------------------------------------------------------------------ carriers


def _deb(files: dict[str, bytes]) -> bytes:
    """A minimal .deb: ar archive with debian-binary, control.tar.xz and data.tar.xz."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, content in (("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", data.getvalue())):
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode())
        out.write(content + (b"\n" if len(content) % 2 else b""))
    return out.getvalue()


def test_deb_members_under_a_prefix_are_extracted(tmp_path):
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(_deb({"./usr/share/pkg/a.jpg": b"A", "./usr/share/pkg/sub/b.png": b"BB", "./usr/bin/x": b"X"}))
    written = extract_deb_members(deb, "usr/share/pkg/", tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["a.jpg", "sub/b.png"]
    assert (tmp_path / "out" / "sub" / "b.png").read_bytes() == b"BB"
    assert len(extract_deb_members(deb, "usr/share/pkg/", tmp_path / "one", names=["a.jpg"])) == 1
    with pytest.raises(ZooError, match="lacks c.jpg"):
        extract_deb_members(deb, "usr/share/pkg/", tmp_path / "two", names=["c.jpg"])


def test_deb_refuses_unsafe_paths_and_non_debs(tmp_path):
    deb = tmp_path / "evil_1_all.deb"
    deb.write_bytes(_deb({"./usr/share/pkg/../../../etc/x": b"X"}))
    with pytest.raises(ZooError, match="unsafe path"):
        extract_deb_members(deb, "usr/share/pkg/", tmp_path / "out")
    bad = tmp_path / "bad_1_all.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ZooError, match="not a Debian package"):
        extract_deb_members(bad, "usr/", tmp_path / "out")


def _rcc(files: dict[str, bytes]) -> bytes:
    """A version-1 Qt resource bundle: root directory with one sub-directory "d" holding `files`."""
    names, name_offsets = b"", {}
    for name in ["d", *files]:
        name_offsets[name] = len(names)
        encoded = name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + encoded
    data, data_offsets = b"", {}
    for i, (name, content) in enumerate(files.items()):
        data_offsets[name] = len(data)
        blob = struct.pack(">I", len(content)) + zlib.compress(content) if i % 2 else content  # qCompress
        data += struct.pack(">I", len(blob)) + blob
    tree = struct.pack(">IHII", 0, 2, 1, 1)  # root: a directory with one child at index 1
    tree += struct.pack(">IHII", name_offsets["d"], 2, len(files), 2)
    for i, name in enumerate(files):
        tree += struct.pack(">IHHHI", name_offsets[name], i % 2, 0, 0, data_offsets[name])
    tree_at = 20
    data_at = tree_at + len(tree)
    names_at = data_at + len(data)
    return b"qres" + struct.pack(">IIII", 1, tree_at, data_at, names_at) + tree + data + names


def test_qt_resource_bundle_files_plain_and_compressed():
    files = {"a.webp": b"plain bytes", "b.jpg": b"compressed " * 20}
    assert dict(rcc_files(_rcc(files), "test.rcc")) == {"d/a.webp": files["a.webp"], "d/b.jpg": files["b.jpg"]}
    with pytest.raises(ZooError, match="not a Qt resource bundle"):
        list(rcc_files(b"nope" + bytes(20), "x.rcc"))


# ------------------------------------------------------------------ photos and prose helpers


def test_near_duplicates_are_found_across_sizes_and_encodings():
    rng = np.random.default_rng(0)
    base = Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8)).resize((384, 256))
    other = Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8)).resize((384, 256))
    buffer = io.BytesIO()
    base.resize((300, 200)).save(buffer, "JPEG", quality=80)
    recoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    kept = [eval_sets._thumbnail(base)]
    assert eval_sets._near_duplicate(eval_sets._thumbnail(recoded), kept)
    assert not eval_sets._near_duplicate(eval_sets._thumbnail(other), kept)
    assert not eval_sets._near_duplicate(eval_sets._thumbnail(base), [])


def test_paragraphs_skip_listings_and_split_into_prose_sentences():
    parser = eval_sets._ParagraphParser()
    parser.feed(
        "<p>Install the <code>foo</code> package first. Then run it as root!</p>"
        "<pre>$ apt-get install foo</pre><p>See <a href='x'>this   section</a> for more details.</p>"
    )
    assert parser.paragraphs == [
        "Install the foo package first. Then run it as root!",
        "See this section for more details.",
    ]
    assert eval_sets._sentences(parser.paragraphs[0], "en") == [
        "Install the foo package first.",
        "Then run it as root!",
    ]
    assert eval_sets._sentences("これはペンです。あれは本です。", "ja") == ["これはペンです。", "あれは本です。"]
    assert eval_sets._is_prose("Install the foo package first.", "en")
    assert not eval_sets._is_prose("$ ls -l /etc/apt/*.list | wc -l.", "en")  # mostly symbols
    assert not eval_sets._is_prose("Too short.", "en")


def test_token_buckets_are_inclusive_and_drop_outliers():
    texts = ["w " * n for n in (3, 8, 16, 17, 64, 65, 128, 129)]
    grouped = eval_sets.token_buckets(texts, lambda t: len(t.split()))
    assert {k: [len(t.split()) for t in v] for k, v in grouped.items()} == {
        "8-16": [8, 16],
        "17-32": [17],
        "33-64": [64],
        "65-128": [65, 128],
    }


# ------------------------------------------------------------------ the real sets


@pytest.mark.slow
def test_real_photos_are_many_large_unique_and_split_disjointly():
    catalogue = eval_sets.photo_catalogue()
    assert len(catalogue) >= 300
    assert len({e.name for e in catalogue}) == len(catalogue)
    assert all(min(e.width, e.height) >= eval_sets.MIN_SHORT_SIDE for e in catalogue)
    assert all(e.split == eval_sets.split_of(e.name) and e.licence for e in catalogue)
    evaluation, calibration = eval_sets.photo_entries("eval"), eval_sets.photo_entries("calib")
    assert len(evaluation) >= 200 and len(calibration) >= 50
    assert not {e.name for e in evaluation} & {e.name for e in calibration}
    assert {e.source for e in evaluation} == {"gcompris", "mate", "lomiri", "imagenet", "skimage"}
    for entry in evaluation[::40]:  # a sample decodes to RGB at the catalogued size
        photo = eval_sets.load_photo(entry)
        assert photo.image.mode == "RGB" and photo.image.size == (entry.width, entry.height)
    loaders = catalogue_of("zoo:photos")
    assert len(loaders) == len(evaluation) and loaders[0]().name == evaluation[0].name


@pytest.mark.slow
def test_real_prose_fills_every_length_bucket_in_several_languages():
    from tokcomp.sources import load_model

    english = load_model("zoo:minilm-l6").processor
    multilingual = load_model("zoo:multilingual-e5-small").processor
    for language in eval_sets.TEXT_LANGUAGES:
        evaluation = eval_sets.evaluation_texts(language, "eval")
        calibration = eval_sets.evaluation_texts(language, "calib")
        assert not set(evaluation) & set(calibration)
        tokenizer = english if language == "en" else multilingual
        buckets = eval_sets.token_buckets(evaluation, lambda t, tok=tokenizer: len(tok(t)["input_ids"]))
        assert all(len(texts) >= 50 for texts in buckets.values()), (language, {k: len(v) for k, v in buckets.items()})
    assert len(catalogue_of("zoo:prose:de")) == len(eval_sets.evaluation_texts("de"))
