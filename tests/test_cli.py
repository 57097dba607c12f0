"""The command line: zoo commands, --debug tracebacks, usage errors."""

import os
import subprocess
import sys


def _cli(*args):
    env = {**os.environ, "TOKCOMP_QUIET": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tokcomp.cli", *args], capture_output=True, text=True, env=env)


def test_zoo_list_and_pull_print_the_folder_last():
    listing = _cli("zoo", "list")
    assert listing.returncode == 0, listing.stderr
    assert "dinov2-small" in listing.stderr and "minilm-l6" in listing.stderr
    pulled = _cli("zoo", "pull", "minilm-l6")
    assert pulled.returncode == 0, pulled.stderr
    folder = pulled.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(folder, "config.json"))


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


def test_usage_error_is_reported_by_click():
    result = _cli("compile")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
