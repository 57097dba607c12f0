"""Outputs appear whole or not at all; only what tokcomp wrote is ever replaced; input files fail on one line."""

import errno
import os
import stat

import pytest

from tokcomp.errors import TokcompError, storage_errno
from tokcomp.fileio import (
    FILE_MODE,
    FOLDER_MODE,
    atomic_directory,
    check_output_file,
    check_output_folder,
    read_jsonl,
    read_text,
    write_json,
)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_folder_is_replaced_only_with_force(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "tokcomp.json").write_text("{}")
    with pytest.raises(TokcompError, match="--force"):
        with atomic_directory(target):
            pass
    assert (target / "tokcomp.json").read_text() == "{}"
    with atomic_directory(target, force=True) as tmp:
        (tmp / "new").write_text("fresh")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial-* or .old-* left


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_tokcomp_did_not_write_is_never_replaced(tmp_path, force):
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    (target / "sub" / "deep.txt").write_text("me too")
    before = _tree(tmp_path)
    with pytest.raises(TokcompError, match="holds files tokcomp did not write") as err:
        with atomic_directory(target, force=force):
            pytest.fail("the block must not run")
    assert ("--force replaces only" in str(err.value)) == force
    assert _tree(tmp_path) == before


def test_an_empty_folder_is_used_as_it_is(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "tokcomp.json").write_text("{}")
    assert (tmp_path / "out" / "tokcomp.json").is_file()


@pytest.mark.parametrize(("target", "inputs", "message"), [
    (".", (), "the working directory"),
    ("..", (), "the working directory"),
    ("ckpt", ("ckpt/recipe.yaml",), "the input ckpt/recipe.yaml"),
    ("ckpt", ("ckpt/data/images",), "the input ckpt/data/images"),
])  # fmt: skip
def test_output_may_not_hold_the_working_directory_or_an_input(tmp_path, monkeypatch, target, inputs, message):
    (tmp_path / "ckpt" / "data" / "images").mkdir(parents=True)
    (tmp_path / "ckpt" / "tokcomp.json").write_text("{}")
    (tmp_path / "ckpt" / "recipe.yaml").write_text("model: m\n")
    monkeypatch.chdir(tmp_path / "ckpt" / "data" if target == ".." else tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(TokcompError, match=message):
        check_output_folder(target, force=True, inputs=inputs)
    assert _tree(tmp_path) == before


def test_output_that_is_a_file_or_under_one(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TokcompError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f", force=True)
    with pytest.raises(TokcompError, match="f is a file, not a folder"):
        check_output_folder(tmp_path / "f" / "out", force=False)
    assert (tmp_path / "f").read_text() == "x"


def test_outside_the_cache_a_folder_is_never_replaced_blindly(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x").write_text("x")
    with pytest.raises(ValueError, match="only for folders in tokcomp's cache"):
        check_output_folder(tmp_path / "elsewhere", force=True, marker=None)
    (tmp_path / "cache" / "zoo" / "m").mkdir(parents=True)
    (tmp_path / "cache" / "zoo" / "m" / "half").write_text("an older build")
    with atomic_directory(tmp_path / "cache" / "zoo" / "m", force=True, marker=None) as tmp:
        (tmp / "zoo.json").write_text("{}")
    assert [p.name for p in (tmp_path / "cache" / "zoo" / "m").iterdir()] == ["zoo.json"]


def test_outputs_get_ordinary_permissions(tmp_path):
    with atomic_directory(tmp_path / "out") as tmp:
        secret = tmp / "model.safetensors"
        secret.write_bytes(b"w")
        secret.chmod(0o600)  # what safetensors and mkstemp leave
        (tmp / "sub").mkdir(mode=0o700)
    out = tmp_path / "out"
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == FILE_MODE
    assert stat.S_IMODE((out / "sub").stat().st_mode) == FOLDER_MODE == stat.S_IMODE(out.stat().st_mode)
    write_json(tmp_path / "r.json", {})
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == FILE_MODE


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    with pytest.raises(TokcompError, match=r"cannot write .*out: No space left on device; [0-9.]+ GiB free there"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half").write_bytes(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_safetensors_write_errors_are_storage_errors():
    class SafetensorError(Exception):  # the Rust library's message, as it reaches Python
        pass

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    older = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    assert storage_errno(full) == storage_errno(older) == errno.ENOSPC
    assert storage_errno(SafetensorError("invalid header")) is None
    assert storage_errno(ValueError("Os { code: 28")) is None


def test_result_files_are_replaced_only_when_they_are_tokcomp_results(tmp_path):
    mine, ours = tmp_path / "mine.json", tmp_path / "eval.json"
    mine.write_text('{"budget": 1}')
    ours.write_text('{"kind": "tokcomp-eval"}')
    with pytest.raises(TokcompError, match="already exists .*--force"):
        check_output_file(ours, force=False, kind="tokcomp-eval")
    assert check_output_file(ours, force=True, kind="tokcomp-eval") == ours
    with pytest.raises(TokcompError, match="is not a tokcomp-eval result"):
        check_output_file(mine, force=True, kind="tokcomp-eval")
    with pytest.raises(TokcompError, match="is a folder, not a file"):
        check_output_file(tmp_path, force=True, kind="tokcomp-eval")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "tokcomp.json").write_text("{}")
    (tmp_path / "ckpt" / "bench.json").write_text("[]")  # inside a checkpoint folder: tokcomp's
    assert check_output_file(tmp_path / "ckpt" / "bench.json", force=True, kind="tokcomp-bench").name == "bench.json"
    assert mine.read_text() == '{"budget": 1}'


def test_text_files_name_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("ok\nstill ok\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(TokcompError, match=r"t.txt:3: not UTF-8 text \(byte 0xe9"):
        read_text(path)


@pytest.mark.parametrize(("text", "message"), [
    ('{"text": "a"}\n\n{"text": \n', r"j.jsonl:3: not valid JSON"),
    ('{"text": "a"}\n"just a string"\n', r"j.jsonl:2: a JSON str, not an object"),
])  # fmt: skip
def test_jsonl_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "j.jsonl"
    path.write_text(text)
    with pytest.raises(TokcompError, match=message):
        list(read_jsonl(path))
