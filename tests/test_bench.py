"""`tokcomp bench`: original (rebuilt offline from the checkpoint) vs compressed, per runtime."""

import os
import subprocess

import pytest
import torch

from tests.test_export import TOKCOMP, make_checkpoint
from tokcomp.export.bench import markdown_table, time_pair
from tokcomp.export.original import load_original
from tokcomp.fileio import read_json
from tokcomp.surgery import token_blocks


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("bench"), [{"type": "tome", "r": 2}], kind="vit", layers=1)


def test_original_is_the_base_model_rebuilt_from_the_checkpoint(ckpt):
    from transformers import ViTForImageClassification

    original = load_original(ckpt)
    assert not token_blocks(original)
    base = ViTForImageClassification.from_pretrained(ckpt.parent / "model").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(original(pixel_values=x).logits, base(pixel_values=x).logits)


def test_time_pair_interleaves_after_warmup():
    calls = []
    times_o, times_c = time_pair(
        lambda inputs: calls.append("o"), lambda inputs: calls.append("c"), {}, "cpu", warmup=2, repeats=3
    )
    assert calls == ["o", "c"] * 5 and len(times_o) == len(times_c) == 3


def test_cli_bench_torch_and_onnxruntime(ckpt, tmp_path):
    markdown = tmp_path / "bench.md"
    result = subprocess.run(
        [*TOKCOMP, "bench", str(ckpt), "-r", "torch", "-r", "onnxruntime", "--batch-sizes", "1,2",
         "--warmup", "1", "--repeats", "2", "--markdown", str(markdown)],
        capture_output=True, text=True, env={**os.environ, "TOKCOMP_QUIET": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("bench.json")
    data = read_json(ckpt / "bench.json")
    assert [(r["runtime"], r["batch_size"]) for r in data["results"]] == [
        ("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2)
    ]  # fmt: skip
    for row in data["results"]:
        assert row["original"]["throughput"] > 0 and row["compressed"]["throughput"] > 0
        assert row["speedup"] == pytest.approx(row["compressed"]["throughput"] / row["original"]["throughput"])
    assert data["machine"]["cpu"] and data["settings"]["statistic"] == "median"
    assert data["flops"]["ideal_speedup"] > 1
    assert markdown.read_text() == markdown_table(data) and markdown.read_text().count("| onnxruntime |") == 2


def test_cli_bench_rejects_runtimes_not_available(ckpt):
    if torch.cuda.is_available():
        pytest.skip("every runtime is available on a GPU machine")
    result = subprocess.run([*TOKCOMP, "bench", str(ckpt), "-r", "cuda-eager"], capture_output=True, text=True)
    assert result.returncode == 2 and "not available here" in result.stderr and "onnxruntime" in result.stderr
