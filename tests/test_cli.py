"""The command line as a real process: zoo commands, --version, --debug tracebacks, usage errors,
Ctrl-C and SIGTERM mid-run, a full disk, and what a log file sees (steps with durations, no noise)."""

import hashlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import tokcomp

TOKCOMP = [sys.executable, "-m", "tokcomp.cli"]


def _cli(*args, quiet=True, **kwargs):
    env = {**os.environ, "COLUMNS": "200"}
    if quiet:
        env["TOKCOMP_QUIET"] = "1"
    else:
        env.pop("TOKCOMP_QUIET", None)
        env.pop("COLUMNS")  # rich's default width, 80: long paths must still come out whole
    return subprocess.run([*TOKCOMP, *args], capture_output=True, text=True, env=env, **kwargs)


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_zoo_list_and_pull_print_the_folder_last():
    listing = _cli("zoo", "list")
    assert listing.returncode == 0, listing.stderr
    assert "dinov2-small" in listing.stderr and "minilm-l6" in listing.stderr
    assert "zoo:photos" in listing.stderr and "librivox" in listing.stderr  # data sets too, by their ids
    pulled = _cli("zoo", "pull", "minilm-l6")
    assert pulled.returncode == 0, pulled.stderr
    folder = pulled.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(folder, "config.json"))


def test_version():
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tokcomp {tokcomp.__version__}"


def test_unknown_zoo_model_lists_valid_names():
    result = _cli("zoo", "pull", "nope")
    assert result.returncode == 2
    assert "zoo:dinov2-small" in result.stderr and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\npasses:\n  - type: nope\n")
    quiet = _cli("compile", str(recipe), "-o", str(tmp_path / "out"))
    loud = _cli("--debug", "compile", str(recipe), "-o", str(tmp_path / "out"))
    assert "Traceback" not in quiet.stderr and quiet.returncode == 2
    assert "Traceback" in loud.stderr and "RecipeError" in loud.stderr and loud.returncode != 0


def test_usage_error_is_one_line_naming_the_help():
    result = _cli("compile")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: Missing argument 'recipe'. (see `tokcomp compile --help`)"


def test_no_arguments_show_the_help():
    result = _cli()
    assert "Usage: tokcomp" in result.stdout + result.stderr and "compile" in result.stdout + result.stderr


# ------------------------------------------------------------------ real runs of a tiny model


@pytest.fixture(scope="module")
def blocking_data(tmp_path_factory):
    """An image folder whose second "image" is a FIFO: reading it blocks, so a run stops there, mid-work."""
    folder = tmp_path_factory.mktemp("fifo") / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    os.mkfifo(folder / "b.png")
    return folder


def _recipe(tmp_path, model_dir, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {model_dir}\npasses: [{{type: tome, r: 2}}]\nevaluation: {{data: {data}, samples: 2}}\n")
    return str(path)


def _interrupt_after_loading(args, sig) -> tuple[int, str]:
    """Start `tokcomp ARGS`, wait until it has loaded its model (its first step line), send `sig`."""
    env = {k: v for k, v in os.environ.items() if k != "TOKCOMP_QUIET"}
    process = subprocess.Popen([*TOKCOMP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, process.kill)  # a hang fails the test instead of the suite
    watchdog.start()
    try:
        seen = []
        while not any(line.startswith("loading ") and line.rstrip().endswith("s)") for line in seen):
            line = process.stderr.readline()
            assert line, f"exited before loading: {''.join(seen)}"
            seen.append(line)
        time.sleep(1)  # into the next step: reading the data, where the FIFO blocks
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
    return process.returncode, "".join(seen) + err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_compile_exits_with_one_line_and_leaves_the_output_alone(
    tiny_vit_dir, blocking_data, tmp_path, sig, code
):
    out = tmp_path / "out"
    tokcomp.compile({"model": str(tiny_vit_dir), "passes": [{"type": "tome", "r": 1}], "evaluation": False}, out)
    recipe = _recipe(tmp_path, tiny_vit_dir, blocking_data)
    before = _tree(tmp_path)
    returncode, err = _interrupt_after_loading(["compile", recipe, "-o", str(out), "--force"], sig)
    assert returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: tokcomp compile interrupted ({sig.name}) while measuring fidelity on {blocking_data}")
    assert last.endswith("nothing half-written was left") and "Traceback" not in err
    assert _tree(tmp_path) == before  # the old checkpoint is whole, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yaml"]  # no .partial-* folder


def test_ctrl_c_mid_eval(tiny_vit_dir, blocking_data, tmp_path):
    out = tokcomp.compile({"model": str(tiny_vit_dir), "passes": [{"type": "tome", "r": 1}], "evaluation": False}, tmp_path / "ck")
    before = _tree(tmp_path)
    returncode, err = _interrupt_after_loading(["eval", str(out), "--data", str(blocking_data)], signal.SIGINT)
    assert returncode == 130, err
    assert f"error: tokcomp eval interrupted (SIGINT) while reading {blocking_data}" in err and "Traceback" not in err
    assert _tree(tmp_path) == before and not (out / "eval.json").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tiny_vit_dir, tmp_path):
    """The weights (575 KB) exceed a 200 KB file-size limit: the write fails as on a full disk."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(images / "a.png")

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run(
        [*TOKCOMP, "compile", _recipe(tmp_path, tiny_vit_dir, images), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "TOKCOMP_QUIET": "1"}, preexec_fn=small_files,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: cannot write {tmp_path / 'out'}: File too large (free some space, or write elsewhere with -o)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "recipe.yaml"]


def test_a_log_file_gets_one_line_per_step_and_no_third_party_noise(tiny_vit_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / ("a-rather-long-folder-name-" * 4) / "checkpoint"
    result = _cli("compile", _recipe(tmp_path, tiny_vit_dir, images), "-o", str(out), quiet=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    steps = [f"loading {tiny_vit_dir} (", f"measuring fidelity on {images} (", "random-drop baseline on 1 samples (",
             f"writing {out} ("]  # fmt: skip
    for start in steps:
        assert any(line.startswith(start) and line.endswith("s)") for line in lines), (start, lines)
    for noise in ("Loading weights", "Writing model shards", "torchvision", "it/s]", "Warning"):
        assert noise not in result.stderr
    assert result.stdout.strip() == str(out.resolve())  # printed whole, however narrow the console


def test_no_eval_skips_the_fidelity_measurement(tiny_vit_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    result = _cli("compile", _recipe(tmp_path, tiny_vit_dir, images), "-o", str(tmp_path / "out"), "--no-eval", quiet=False)
    assert result.returncode == 0, result.stderr  # the (empty) evaluation data is never read
    assert "measuring fidelity" not in result.stderr and "fidelity not measured" in result.stderr
