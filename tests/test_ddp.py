"""The DiffRate search under torchrun: 2 CPU processes (gloo), sharded data, one shared result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_vision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("ddp")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(root / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "model")
    (root / "out").mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tests" / "ddp_worker.py"), str(root / "model"), str(root / "out"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKCOMP_QUIET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out"


def _rank(runs, rank):
    return json.loads((runs / f"rank{rank}.json").read_text())


def test_both_ranks_learn_the_same_schedule_from_their_shards(runs):
    first, second = _rank(runs, 0), _rank(runs, 1)
    assert first["world_size"] == second["world_size"] == 2
    assert (first["prune_kept"], first["merge_kept"]) == (second["prune_kept"], second["merge_kept"])
    report = first["report"]
    assert report["processes"] == 2 and report["calibration"]["samples"] == 16
    assert report["steps"] == 2 * 2  # 8 samples per rank, batch 4, 2 epochs
    # Gradients are averaged every step, so both ranks hold the same logits all along: the FLOPs
    # they see each epoch (computed locally from those logits) agree exactly.
    assert [e["gmacs"] for e in first["report"]["epochs"]] == [e["gmacs"] for e in second["report"]["epochs"]]
    assert abs(report["achieved_gmacs"] - report["target_gmacs"]) <= 0.02 * report["target_gmacs"]


def test_only_rank_zero_writes(runs):
    assert json.loads((runs / "written_by.json").read_text()) == {"rank": 0}
