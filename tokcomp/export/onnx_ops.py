"""The ONNX side of the tokcomp ops: schemas, exporter translations, function bodies.

During export each `tokcomp::` custom op becomes one plain node of domain "tokcomp"
(a registered OpSchema makes it a known op for onnxscript and onnx.checker). The
exporter inlines local functions, so the ONNX function bodies (standard ops only)
are attached to `model.functions` after export; ONNX Runtime inlines them and runs
the model. The TensorRT flavour removes the bodies again (tensorrt_onnx.py).
"""

from __future__ import annotations

import onnx
from onnx import FunctionProto, ModelProto, helper
from onnx.defs import OpSchema

from tokcomp.plugins_cuda import NAMESPACE, OP_TYPES

OPSET_VERSION = 1
STANDARD_OPSET = 18  # LayerNormalization (17), ScatterElements reduction=add (16); TensorRT 10 parses it

# op_type -> (input names, documentation)
_SIGNATURES = {
    "GatherTokens": (("t", "index"), "out[b, k] = t[b, index[b, k]]"),
    "IndexMerge": (("t", "kept", "src", "dst"), "t[kept] + scatter_add(t[src] at dst)"),
}


def register_schemas() -> None:
    """Register an OpSchema for each tokcomp op (idempotent)."""
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
    for op_type, (inputs, doc) in _SIGNATURES.items():
        if onnx.defs.has(op_type, NAMESPACE):
            continue
        params = [OpSchema.FormalParameter(name, "T" if name == "t" else "I", f"{name} input") for name in inputs]
        schema = OpSchema(
            op_type,
            NAMESPACE,
            OPSET_VERSION,
            doc=doc,
            inputs=params,
            outputs=[OpSchema.FormalParameter("out", "T", "tokens after the step")],
            type_constraints=[("T", floats, "token values"), ("I", ["tensor(int32)", "tensor(int64)"], "token indices")],
            # what TensorRT's ONNX parser reads on plugin nodes; declared so the TensorRT flavour checks
            attributes=[
                OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
                OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False),
                OpSchema.Attribute("aot", OpSchema.AttrType.INT, "1: TensorRT AOT plugin implementation", required=False),
            ],
        )
        onnx.defs.register_schema(schema)


# --- exporter translations: one node per custom op ---------------------------------


def translation_table() -> dict:
    """custom_translation_table entries for torch.onnx.export (tokcomp::* -> tokcomp-domain node)."""
    import torch
    from onnxscript import values

    import tokcomp.plugins_cuda.ops  # noqa: F401  (defines torch.ops.tokcomp.*)

    register_schemas()
    opset = values.Opset(NAMESPACE, OPSET_VERSION)

    def gather_tokens(t, index):
        return opset.GatherTokens(t, index)

    def index_merge(t, kept, src, dst):
        return opset.IndexMerge(t, kept, src, dst)

    ops = torch.ops.tokcomp
    return {ops.gather_tokens.default: gather_tokens, ops.index_merge.default: index_merge}


# --- function bodies (standard ONNX ops) -------------------------------------------


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values))


def _scalar(name: str, value: int) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, onnx.TensorProto.INT64, [], [value]))


def _flat_rows() -> list[onnx.NodeProto]:
    """t [B, N, C] -> `rows` [B N, C] and `offsets` [B, 1] (b N): what _gather_rows reads."""
    return [
        _const("axis1", [1]),
        _const("rows_shape", [-1]),
        _scalar("zero", 0),
        _scalar("one", 1),
        helper.make_node("Shape", ["t"], ["width"], start=2, end=3),
        helper.make_node("Concat", ["rows_shape", "width"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["t", "flat_shape"], ["rows"]),
        helper.make_node("Shape", ["t"], ["batch1"], start=0, end=1),
        helper.make_node("Shape", ["t"], ["tokens1"], start=1, end=2),
        helper.make_node("Squeeze", ["batch1"], ["batch"]),
        helper.make_node("Range", ["zero", "batch", "one"], ["samples"]),
        helper.make_node("Unsqueeze", ["samples", "axis1"], ["samples_col"]),
        helper.make_node("Mul", ["samples_col", "tokens1"], ["offsets"]),
    ]


def _gather_rows(index: str, out: str) -> list[onnx.NodeProto]:
    """Rows `index` [B, K] of t as [B, K, C]: one Gather of the flattened rows (export/portable_ops.py's)."""
    return [
        helper.make_node("Cast", [index], [f"{out}_i64"], to=onnx.TensorProto.INT64),
        helper.make_node("Add", [f"{out}_i64", "offsets"], [f"{out}_rows"]),
        helper.make_node("Gather", ["rows", f"{out}_rows"], [out], axis=0),
    ]


def _function(op_type: str, inputs: tuple[str, ...], nodes: list[onnx.NodeProto]) -> FunctionProto:
    return helper.make_function(
        NAMESPACE, op_type, list(inputs), ["out"], nodes, [helper.make_opsetid("", STANDARD_OPSET)], []
    )


def function_bodies() -> dict[str, FunctionProto]:
    """The standard-op graphs ONNX Runtime runs for each op: as export/portable_ops.py writes the steps
    (row Gathers; the sum through a [B, K, R] one-hot MatMul), not per-element GatherElements."""
    gather = _flat_rows() + _gather_rows("index", "out")
    index_merge = (
        _flat_rows()
        + _gather_rows("kept", "kept_rows")
        + _gather_rows("src", "moved")
        + [
            helper.make_node("Shape", ["kept"], ["kept_count1"], start=1, end=2),
            helper.make_node("Squeeze", ["kept_count1"], ["kept_count"]),
            helper.make_node("Range", ["zero", "kept_count", "one"], ["slots"]),
            _const("slot_axes", [0, 2]),
            helper.make_node("Unsqueeze", ["slots", "slot_axes"], ["slots_3d"]),  # [1, K, 1]
            helper.make_node("Cast", ["dst"], ["dst_i64"], to=onnx.TensorProto.INT64),
            helper.make_node("Unsqueeze", ["dst_i64", "axis1"], ["dst_3d"]),  # [B, 1, R]
            helper.make_node("Equal", ["slots_3d", "dst_3d"], ["one_hot_bool"]),
            helper.make_node("CastLike", ["one_hot_bool", "t"], ["one_hot"]),
            helper.make_node("MatMul", ["one_hot", "moved"], ["added"]),
            helper.make_node("Add", ["kept_rows", "added"], ["out"]),
        ]
    )
    bodies = {"GatherTokens": gather, "IndexMerge": index_merge}
    return {op: _function(op, _SIGNATURES[op][0], nodes) for op, nodes in bodies.items()}


def tokcomp_nodes(model: ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == NAMESPACE]


def attach_function_bodies(model: ModelProto) -> list[str]:
    """Add the body of every tokcomp op the graph uses to model.functions; returns the op types."""
    used = sorted({node.op_type for node in tokcomp_nodes(model)})
    unknown = set(used) - set(OP_TYPES.values())
    if unknown:
        raise ValueError(f"graph uses unknown tokcomp ops {sorted(unknown)}")
    bodies = function_bodies()
    present = {(f.domain, f.name) for f in model.functions}
    model.functions.extend(bodies[op] for op in used if (NAMESPACE, op) not in present)
    if not any(o.domain == NAMESPACE for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(NAMESPACE, OPSET_VERSION))
    return used
