"""scripts/gpu_check.py, the helpers of `make gpu-check`: wheel selection and the summary (no GPU, no network)."""

import importlib.util
import json
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(folder: Path, filename: str, files: dict[str, str]) -> Path:
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_install_skips_distributions_that_are_present_and_unpacks_the_rest_without_pip(tmp_path, monkeypatch, capsys):
    check = _gpu_check()
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "pytest-9.2.0-py3-none-any.whl", {"pytest/__init__.py": ""})  # installed here
    _wheel(wheels, "not_here_pkg-1.0-py3-none-any.whl", {"not_here_pkg/__init__.py": "VALUE = 1\n"})
    monkeypatch.setattr(check.subprocess, "run", lambda *a, **k: type("R", (), {"returncode": 1})())  # no pip
    assert check.wheels_install(wheels, target) == 0
    out = capsys.readouterr().out
    assert "pytest" in out and "present" in out and "installing not_here_pkg-1.0" in out
    assert (target / "not_here_pkg" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not (target / "pytest").exists()  # the image's own copy is never shadowed


def test_carried_wheel_names_are_normalised_and_pinned():
    check = _gpu_check()
    assert check.distribution(Path("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl")) == "pydantic-core"
    assert check.distribution(Path("markdown_it_py-4.3.0-py3-none-any.whl")) == "markdown-it-py"
    pins = check.pinned()
    assert all("==" in line for line in pins) and "optimum==2.3.0" in pins
    assert not any(line.split("==")[0] in ("torch", "triton", "numpy") for line in pins)  # the image's own builds
    # transformers replaces the image's copy: the adapters follow its module layout from 5.25 on
    assert {"transformers", "huggingface-hub"} <= check.always() and "optimum" not in check.always()


def test_wheels_marked_always_install_even_where_the_image_has_them(tmp_path, monkeypatch, capsys):
    check = _gpu_check()
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "pytest-9.2.0-py3-none-any.whl", {"pytest/__init__.py": "MARK = 1\n"})  # installed here
    monkeypatch.setattr(check, "always", lambda: {"pytest"})
    monkeypatch.setattr(check.subprocess, "run", lambda *a, **k: type("R", (), {"returncode": 1})())  # no pip
    assert check.wheels_install(wheels, target) == 0
    assert "ahead of it (marked always)" in capsys.readouterr().out
    assert (target / "pytest" / "__init__.py").read_text() == "MARK = 1\n"


def test_summary_lists_every_step_with_test_counts_and_fails_on_a_failed_step(tmp_path):
    check = _gpu_check()
    steps = tmp_path / "steps.tsv"
    steps.write_text("wheels\tok\texit 0\t1.5\ngpu-tests\tfailed\texit 1\t80.2\nthroughput\tskipped\tno CUDA\t0\n")
    (tmp_path / "gpu-tests.log").write_text("....F\n===== 1 failed, 30 passed, 4 skipped in 70.1s =====\n")
    assert check.summary(steps, tmp_path, dry_run=True) == 1
    record = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["step"], s["status"]) for s in record["steps"]] == [("wheels", "ok"), ("gpu-tests", "failed"), ("throughput", "skipped")]
    assert record["steps"][1]["tests"] == "1 failed, 30 passed, 4 skipped in 70.1s"
    markdown = (tmp_path / "summary.md").read_text()
    assert "DRY_RUN" in markdown and "| throughput | skipped | no CUDA |" in markdown
