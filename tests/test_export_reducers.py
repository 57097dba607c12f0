"""Every reducer exports: the tokcomp-op ONNX graph matches PyTorch in ONNX Runtime at batch 1 and 4,
and its TensorRT flavour passes onnx.checker and the TensorRT op allow-list.

The tokcomp flavour contains the whole reducer (its matching / scoring in standard
ops and its application steps as tokcomp nodes), so it covers the portable graph's
ops too; the portable flavour of each reducer on the real DINOv2-S is measured by
tests/test_export_real.py (opt-in, minutes).
"""

import onnx
import pytest

import tokcomp
from tests.test_export import small_vision
from tokcomp.export.io_spec import ExportWrapper, io_spec
from tokcomp.export.onnx_export import export_onnx
from tokcomp.export.tensorrt_onnx import check_model, check_tensorrt_ops, make_tensorrt_flavour
from tokcomp.export.validate import validate_onnx

# 17 tokens in (16 patches + CLS), one block: exports are the slow part of CI.
REDUCERS = {
    "prune": ({"type": "prune", "r": 4}, {"GatherTokens"}),
    "evit": ({"type": "evit", "r": 4}, {"GatherTokens"}),
    "token_transform": ({"type": "token_transform", "r": 4}, {"GatherTokens"}),
    "diffrate": (
        {"type": "diffrate", "schedule": {"prune": [14], "merge": [11]}, "merge_rule": "importance"},
        {"GatherTokens"},
    ),
    "diffrate_bipartite": (
        {"type": "diffrate", "schedule": {"prune": [14], "merge": [11]}, "merge_rule": "bipartite"},
        {"GatherTokens", "IndexMerge"},
    ),
}


@pytest.mark.parametrize("name", sorted(REDUCERS))
def test_reducer_exports_with_tokcomp_ops(name, tmp_path):
    passes, expected_ops = REDUCERS[name]
    model = small_vision("dinov2", layers=1)
    tokcomp.apply(model, [passes])
    spec = io_spec(model, "transformers", "image", 16, None)
    wrapper = ExportWrapper(model, spec, "transformers")
    graph = export_onnx(wrapper, spec, "tokcomp")
    used = {n.op_type for n in graph.graph.node if n.domain == "tokcomp"}
    assert expected_ops <= used, used
    path = tmp_path / "model.tokcomp.onnx"
    onnx.save_model(graph, str(path))
    report = validate_onnx(path, wrapper, spec)
    worst = max(d for per_batch in report["max_abs_diff"].values() for d in per_batch.values())
    assert report["passed"] and report["batch_sizes"] == [1, 4] and worst <= 1e-4
    trt = make_tensorrt_flavour(graph)
    check_model(trt)
    ops = check_tensorrt_ops(trt)
    assert set(ops["plugins"]) == used - {"TransformApply"} and ops["unsupported"] == []
