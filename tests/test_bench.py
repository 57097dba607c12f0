"""`tokcomp bench`: original (rebuilt offline from the checkpoint) vs compressed, per runtime."""

import os
import subprocess

import pytest
import torch

from tests.test_export import TOKCOMP, make_checkpoint
from tokcomp.export.bench import RESULT_KIND, _stats, markdown_table, noise_reasons, time_pair
from tokcomp.export.original import load_original
from tokcomp.fileio import kind_comment, read_json
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
        assert row["original"]["spread"] >= 0 and row["compressed"]["spread"] >= 0  # beside every figure
        assert row["noisy"] == bool(row["noise"]) and ("load_1min" in row)
    assert data["kind"] == RESULT_KIND and data["noisy"] == any(r["noisy"] for r in data["results"])
    assert data["machine"]["cpu"] and data["settings"]["statistic"] == "median"
    assert data["flops"]["ideal_speedup"] > 1
    assert markdown.read_text() == kind_comment(RESULT_KIND) + markdown_table(data)
    assert markdown.read_text().count("| onnxruntime |") == 2


def test_cli_bench_rejects_runtimes_not_available(ckpt):
    if torch.cuda.is_available():
        pytest.skip("every runtime is available on a GPU machine")
    result = subprocess.run([*TOKCOMP, "bench", str(ckpt), "-r", "cuda-eager"], capture_output=True, text=True)
    assert result.returncode == 2 and "not available here" in result.stderr and "onnxruntime" in result.stderr


def test_spread_and_load_make_a_row_noisy():
    steady = _stats([1.0, 1.01, 0.99, 1.0, 1.02], batch=4)
    jumpy = _stats([1.0, 1.5, 0.8, 1.3, 0.9], batch=4)
    assert steady["spread"] < 0.05 and jumpy["spread"] > 0.3 and steady["throughput"] == pytest.approx(4.0)
    row = {"original": steady, "compressed": steady, "load_1min": 1.9}
    assert noise_reasons(row, cpu_count=2) == []  # a 2-CPU machine running the benchmark's own 2 threads
    assert noise_reasons({**row, "load_1min": 4.5}, cpu_count=2) == ["load average 4.5 on 2 CPUs"]
    assert noise_reasons({**row, "compressed": jumpy}, cpu_count=2) == [f"compressed timings spread {100 * jumpy['spread']:.0f}%"]


def test_a_busy_machine_is_warned_about_and_marked(ckpt, tmp_path, monkeypatch, capsys):
    import sys

    from tokcomp.cli import main

    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 30.0, 20.0))
    out = tmp_path / "busy.json"
    monkeypatch.setattr(sys, "argv", ["tokcomp", "bench", str(ckpt), "-r", "torch", "--batch-sizes", "1",
                                      "--warmup", "0", "--repeats", "2", "-o", str(out)])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    (row,) = read_json(out)["results"]
    assert row["noisy"] and row["load_1min"] == 40.0 and f"load average 40.0 on {os.cpu_count()} CPUs" in row["noise"]
    assert read_json(out)["noisy"] and read_json(out)["machine"]["load_1min"] == 40.0
    assert "warning: torch batch 1 is noisy: load average 40.0" in err and "(noisy)" in err
