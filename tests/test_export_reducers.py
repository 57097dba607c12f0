"""Every reducer exports: the tokcomp-op ONNX graph matches PyTorch in ONNX Runtime at batch 1 and 4,
and its TensorRT flavour passes onnx.checker and the TensorRT op allow-list.

The tokcomp flavour contains the whole reducer (its matching / scoring in standard
ops and its application steps as tokcomp nodes), so it covers the portable graph's
ops too; the portable flavour of each reducer on the real DINOv2-S is measured by
tests/test_export_real.py (opt-in, minutes).
"""

from collections import Counter

import onnx
import pytest

import tokcomp
from tests.test_export import small_vision
from tokcomp.export.io_spec import ExportWrapper, io_spec
from tokcomp.export.onnx_export import export_onnx
from tokcomp.export.tensorrt_onnx import check_model, check_tensorrt_ops, make_tensorrt_flavour
from tokcomp.export.validate import validate_onnx

# 17 tokens in (16 patches + CLS), one block: exports are the slow part of CI. Each reducer with
# the reduction steps its block exports: the tokcomp nodes, and a MatMul where it reads one of them.
SCHEDULE = {"prune": [14], "merge": [11]}
REDUCERS = {
    "tome": ({"type": "tome", "r": 4}, {"IndexMerge": 1}),
    "tome_greedy": ({"type": "tome", "r": 4, "matching": "greedy", "merge": "norm_preserving"}, {"IndexMerge": 1}),
    "prune": ({"type": "prune", "r": 4}, {"GatherTokens": 1}),
    "zero_tprune": ({"type": "zero_tprune", "r": 4}, {"GatherTokens": 1}),
    "evit": ({"type": "evit", "r": 4}, {"IndexMerge": 1}),  # the inattentive tokens fuse into one
    "token_transform": ({"type": "token_transform", "r": 4}, {"IndexMerge": 1}),  # k = 1: exclusive
    # k = 2 spreads each moved token: kept and moved rows are gathered, the spread is a MatMul on them
    "token_transform_k2": ({"type": "token_transform", "r": 4, "k": 2}, {"GatherTokens": 2, "MatMul": 1}),
    "diffrate": (
        {"type": "diffrate", "schedule": SCHEDULE, "merge_rule": "importance"},
        {"GatherTokens": 1, "IndexMerge": 1},
    ),
    "diffrate_bipartite": (
        {"type": "diffrate", "schedule": SCHEDULE, "merge_rule": "bipartite"},
        {"GatherTokens": 1, "IndexMerge": 1},
    ),
}


def reduction_steps(model: onnx.ModelProto) -> Counter:
    """tokcomp nodes by op type, plus the MatMuls that read a tokcomp node's output."""
    nodes = model.graph.node
    tokcomp_outputs = {name for node in nodes if node.domain == "tokcomp" for name in node.output}
    steps = Counter(node.op_type for node in nodes if node.domain == "tokcomp")
    steps["MatMul"] = sum(node.op_type == "MatMul" and bool(tokcomp_outputs & set(node.input)) for node in nodes)
    return steps


@pytest.mark.parametrize("name", sorted(REDUCERS))
def test_reducer_exports_with_tokcomp_ops(name, tmp_path):
    passes, expected_steps = REDUCERS[name]
    model = small_vision("dinov2", layers=1)
    tokcomp.apply(model, [passes])
    check_tokcomp_export(model, expected_steps, tmp_path)


def check_tokcomp_export(model, expected_steps: dict[str, int], tmp_path) -> None:
    """The tokcomp flavour has `expected_steps`, matches PyTorch at batch 1 and 4, and its TensorRT flavour checks."""
    spec = io_spec(model, "transformers", "image", 16, None)
    wrapper = ExportWrapper(model, spec, "transformers")
    graph = export_onnx(wrapper, spec, "tokcomp")
    steps = reduction_steps(graph)
    assert steps == Counter(expected_steps), steps
    path = tmp_path / "model.tokcomp.onnx"
    onnx.save_model(graph, str(path))
    report = validate_onnx(path, wrapper, spec)
    worst = max(d for per_batch in report["max_abs_diff"].values() for d in per_batch.values())
    assert report["passed"] and report["batch_sizes"] == [1, 4] and worst <= 1e-4
    trt = make_tensorrt_flavour(graph)
    check_model(trt)
    ops = check_tensorrt_ops(trt)
    assert ops["plugins"] == sorted(set(expected_steps) - {"MatMul"}) and ops["unsupported"] == []
