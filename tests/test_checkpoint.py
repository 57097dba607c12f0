"""Checkpoint: exact reload from the folder alone, atomic writes, and one-line errors."""

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import tokcomp
from tests.conftest import tiny_vision
from tokcomp.checkpoint import STATE_FILE, WEIGHTS_FILE, read_state, record_export, weights_header_digest
from tokcomp.errors import CheckpointError, TokcompError
from tokcomp.fileio import FILE_MODE, read_json


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny ViT classifier saved as a local Hugging Face folder, plus a folder of images."""
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("tiny")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(root / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def compiled(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ckpt"
    recipe = {
        "model": str(tiny_model_dir / "model"),
        "passes": [{"type": "tome", "r": 6}],
        "evaluation": {"data": str(tiny_model_dir / "images"), "samples": 6, "batch_size": 4},
    }
    tokcomp.compile(recipe, out)
    return out


def test_checkpoint_files_and_state(compiled):
    for name in (WEIGHTS_FILE, "config.json", STATE_FILE, "recipe.yaml", "report.json", "preprocessor_config.json"):
        assert (compiled / name).is_file(), name
    state = read_json(compiled / STATE_FILE)
    (record,) = state["passes"]
    # version 2: the similarity metric is recorded; 3: matching and merge; 4: cost
    assert record["name"] == "tome" and record["version"] == 4
    assert record["metadata"]["metric"] == "keys"  # the vision default
    assert record["metadata"]["tokens_per_layer"] == [59, 53, 47, 41]
    report = read_json(compiled / "report.json")
    assert report["tokens_per_layer"]["compressed"] == [59, 53, 47, 41]
    assert report["flops"]["compressed"] < report["flops"]["original"]
    assert report["fidelity"]["samples"] == 6
    assert 0 <= report["fidelity"]["top1_agreement"] <= 1
    assert not list(compiled.parent.glob(".ckpt.partial-*"))


def test_load_round_trip_is_exact(compiled, tiny_model_dir):
    from transformers import ViTForImageClassification

    original = ViTForImageClassification.from_pretrained(tiny_model_dir / "model").eval()
    in_memory = tokcomp.apply(original, [{"type": "tome", "r": 6}])
    reloaded = tokcomp.load(compiled)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(in_memory(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits)


def test_existing_output_needs_force(compiled, tiny_model_dir):
    with pytest.raises(TokcompError, match="--force"):
        tokcomp.compile({"model": str(tiny_model_dir / "model"), "passes": [{"type": "tome", "r": 1}]}, compiled)


def test_corrupted_checkpoints_fail_clearly(compiled, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(compiled, truncated)
    data = (truncated / WEIGHTS_FILE).read_bytes()
    (truncated / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        tokcomp.load(truncated)

    garbage = tmp_path / "garbage"
    shutil.copytree(compiled, garbage)
    (garbage / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        tokcomp.load(garbage)

    no_state = tmp_path / "no_state"
    shutil.copytree(compiled, no_state)
    (no_state / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="tokcomp.json is missing"):
        tokcomp.load(no_state)

    bad_state = tmp_path / "bad_state"
    shutil.copytree(compiled, bad_state)
    (bad_state / STATE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        tokcomp.load(bad_state)


def _cli(*args, cwd=None):
    # A bare environment (no PATH, offline), but the same tokcomp as the tests import.
    env = {"TOKCOMP_QUIET": "1", "PATH": "", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "tokcomp.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("model: m\npasses:\n  - type: nope\n", "unknown pass 'nope'"),
        ("model: m\npasses:\n  - type: tome\n    r: 1\n    bogus: 2\n", "unknown key 'bogus'"),
        ("model: /no/such/model\npasses: [{type: tome, r: 1}]\n", "cannot load model '/no/such/model'"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, recipe, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    result = _cli("compile", str(path), "-o", str(tmp_path / "out"))
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_inspect_and_bad_checkpoint(compiled, tmp_path):
    result = _cli("inspect", str(compiled))
    assert result.returncode == 0, result.stderr
    assert "tokens out" in result.stderr and "59" in result.stderr
    missing = _cli("inspect", str(tmp_path))
    assert missing.returncode != 0 and "tokcomp.json is missing" in missing.stderr


def _edited_copy(compiled, tmp_path, edit):
    copy = tmp_path / "copy"
    shutil.copytree(compiled, copy)
    state = read_json(copy / STATE_FILE)
    edit(state)
    (copy / STATE_FILE).write_text(json.dumps(state, indent=2))
    return copy


def test_digests_are_written_and_outputs_are_ordinary_files(compiled):
    integrity = read_json(compiled / STATE_FILE)["integrity"]
    assert integrity["algorithm"] == "sha256" and len(integrity["state"]) == len(integrity["weights_header"]) == 64
    assert integrity["weights_header"] == weights_header_digest(compiled / WEIGHTS_FILE)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in compiled.iterdir()}
    assert modes[WEIGHTS_FILE] == modes[STATE_FILE] == FILE_MODE  # safetensors alone would leave 0600


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["passes"][0]["metadata"].update(r_per_layer=[8, 8, 8, 8]),
        lambda s: s["passes"][0]["config"].update(r=1),
        lambda s: s["input"].update(image_size=64),
        lambda s: s.update(tokens_per_layer=[60, 50, 40, 30]),
    ],
    ids=["r_per_layer", "config", "input", "tokens_per_layer"],
)
def test_an_edited_tokcomp_json_is_refused(compiled, tmp_path, edit):
    """By load and by everything that reads the state (inspect's one line: tests/test_errors.py)."""
    edited = _edited_copy(compiled, tmp_path, edit)
    with pytest.raises(CheckpointError, match="was edited after compile"):
        tokcomp.load(edited)
    with pytest.raises(CheckpointError, match="was edited after compile"):
        read_state(edited)


def test_weights_of_another_model_are_refused(compiled, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(compiled, swapped)
    tensors = safetensors.torch.load_file(swapped / WEIGHTS_FILE)
    tensors.pop(sorted(tensors)[-1])
    safetensors.torch.save_file(tensors, swapped / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="does not match tokcomp.json"):
        read_state(swapped)


def test_recording_an_export_keeps_the_digest_valid(compiled, tmp_path):
    copy = _edited_copy(compiled, tmp_path, lambda s: None)
    record_export(copy, {"format": "onnx", "file": "model.onnx", "validation": {"passed": True}})
    record_export(copy, {"format": "onnx", "file": "model.onnx", "validation": {"passed": False}})
    assert read_state(copy).exports == [{"format": "onnx", "file": "model.onnx", "validation": {"passed": False}}]
    assert read_json(copy / STATE_FILE)["integrity"] == read_json(compiled / STATE_FILE)["integrity"]
    tokcomp.load(copy)


def test_a_checkpoint_from_before_the_digests_still_loads(compiled, tmp_path):
    legacy = _edited_copy(compiled, tmp_path, lambda s: s.pop("integrity"))
    assert read_state(legacy).integrity is None
    tokcomp.load(legacy)


def test_a_checkpoint_as_the_model_of_a_recipe_is_refused(compiled, tmp_path):
    with pytest.raises(TokcompError, match="is a tokcomp checkpoint .*would silently drop its passes"):
        tokcomp.compile({"model": str(compiled), "passes": [{"type": "tome", "r": 1}]}, tmp_path / "again")
    assert not (tmp_path / "again").exists()
