"""The TensorRT flavour of a tokcomp-op ONNX graph, and the check that TensorRT can parse it.

TensorRT's ONNX parser treats an unknown op_type as a plugin name and reads the
node attributes plugin_version / plugin_namespace (and `aot`, to pick the
ahead-of-time implementation). A model-local function of the same name would be
used instead of the plugin, so the flavour strips the function bodies.

`check_tensorrt_ops` lists every op of the graph and fails on any op TensorRT 10's
ONNX parser does not support, or on the parser's documented restrictions (TopK's K
must be an initializer below 3840; ScatterND has no reduction).

`float16_graph` is the fp16 copy an fp16 engine is built from on TensorRT >= 11,
which is always strongly typed (each tensor keeps the type the graph gives it).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, TensorProto, helper, numpy_helper

from tokcomp.errors import TokcompError
from tokcomp.plugins_cuda import NAMESPACE, PLUGIN_OP_TYPES, PLUGIN_VERSION

# Operators TensorRT 10's ONNX parser imports (onnx-tensorrt docs/operators.md, 10.x,
# opsets 9-20). Deliberately an allow-list: an op missing here fails the check.
TENSORRT_ONNX_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
    LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
    Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
    Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)
TOPK_MAX_K = 3840


def make_tensorrt_flavour(model: ModelProto, aot: bool = True) -> ModelProto:
    """Copy of a tokcomp-op model: bodies removed, plugin attributes set."""
    out = copy.deepcopy(model)
    kept = [f for f in out.functions if f.domain != NAMESPACE]
    del out.functions[:]
    out.functions.extend(kept)
    for node in out.graph.node:
        if node.domain != NAMESPACE:
            continue
        if node.op_type not in PLUGIN_OP_TYPES:
            raise TokcompError(f"tokcomp op {node.op_type} has no TensorRT plugin", hint=f"plugins: {PLUGIN_OP_TYPES}")
        del node.attribute[:]
        node.attribute.extend(
            [
                helper.make_attribute("plugin_version", PLUGIN_VERSION),
                helper.make_attribute("plugin_namespace", NAMESPACE),
                helper.make_attribute("aot", int(aot)),
            ]
        )
    if not any(node.domain == NAMESPACE for node in out.graph.node):
        opsets = [o for o in out.opset_import if o.domain != NAMESPACE]
        del out.opset_import[:]
        out.opset_import.extend(opsets)
    return out


def _constants(model: ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain == "":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def check_tensorrt_ops(model: ModelProto) -> dict[str, Any]:
    """Ops of the graph with counts; raises TokcompError on anything TensorRT's parser rejects."""
    constants = _constants(model)
    counts = Counter()
    problems = []
    plugins = []
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain == NAMESPACE:
            if node.op_type not in PLUGIN_OP_TYPES or attrs.get("plugin_namespace") != NAMESPACE.encode():
                problems.append(f"{key}: not a tokcomp TensorRT plugin node (plugin_namespace missing)")
            plugins.append(node.op_type)
        elif node.domain not in ("", "ai.onnx"):
            problems.append(f"{key}: custom domain '{node.domain}' has no TensorRT importer")
        elif node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"{node.op_type}: not supported by TensorRT's ONNX parser")
        elif node.op_type == "TopK":
            k = constants.get(node.input[1])
            if k is None:
                problems.append(f"TopK {node.name}: K is computed at run time; TensorRT needs an initializer")
            elif int(np.max(k)) >= TOPK_MAX_K:
                problems.append(f"TopK {node.name}: K = {int(np.max(k))} >= {TOPK_MAX_K}")
        elif node.op_type == "ScatterND" and attrs.get("reduction", b"none") not in (b"none", "none"):
            problems.append(f"ScatterND {node.name}: reductions are not supported by TensorRT")
    if model.functions and any(f.domain == NAMESPACE for f in model.functions):
        problems.append("model-local tokcomp functions present: TensorRT would use them instead of the plugins")
    report = {"ops": dict(sorted(counts.items())), "plugins": sorted(set(plugins)), "unsupported": problems}
    if problems:
        raise TokcompError(
            f"the TensorRT flavour uses {len(problems)} op(s) TensorRT cannot parse: " + "; ".join(problems[:10]),
            hint="this reducer needs an export-safe rewrite of those steps (see docs/export.md)",
        )
    return report


# Ops that make float tensors of a type of their own choosing; float16_graph refuses them.
_SELF_TYPED_OPS = {"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}


def float16_graph(model: ModelProto) -> ModelProto:
    """Copy of `model` that computes in fp16, with its fp32 inputs and outputs kept.

    Float initializers and constants become fp16, Casts to float cast to fp16, and one
    Cast at each float input and output keeps the I/O fp32 (as a TensorRT 10 fp16 engine's).
    Stored shapes of intermediate values are dropped (their types changed).
    """
    out = copy.deepcopy(model)
    graph = out.graph
    _half_graph(graph)
    del graph.value_info[:]
    casts_in = [_cast_input(graph, value.name) for value in graph.input if value.type.tensor_type.elem_type == TensorProto.FLOAT]
    casts_out = [_cast_output(graph, value.name) for value in graph.output if value.type.tensor_type.elem_type == TensorProto.FLOAT]
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _half_tensor(tensor: TensorProto) -> TensorProto:
    """fp16 copy of a float tensor; finite values beyond fp16's range (mask fills like -3.4e38) saturate, not become inf."""
    if tensor.data_type != TensorProto.FLOAT:
        return tensor
    values = numpy_helper.to_array(tensor)
    limit = np.finfo(np.float16).max
    values = np.where(np.isfinite(values), np.clip(values, -limit, limit), values)
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def _half_graph(graph: GraphProto) -> None:
    """Initializers, constants and float casts of `graph` (and of its subgraphs) to fp16, in place."""
    for init in graph.initializer:
        init.CopyFrom(_half_tensor(init))
    for node in graph.node:
        if node.op_type in _SELF_TYPED_OPS:
            raise TokcompError(f"float16_graph cannot convert {node.op_type} {node.name} (it picks its own float type)")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _half_graph(attr.g)
            elif attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_half_tensor(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float16)
                attr.CopyFrom(helper.make_attribute("value", numpy_helper.from_array(values)))


def _rename(graph: GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _cast_input(graph: GraphProto, name: str):
    """Consumers of input `name` read `name`_fp16, made by the returned Cast."""
    _rename(graph, name, f"{name}_fp16")
    return helper.make_node("Cast", [name], [f"{name}_fp16"], to=TensorProto.FLOAT16, name=f"{name}_to_fp16")


def _cast_output(graph: GraphProto, name: str):
    """The producer of output `name` writes `name`_fp16; the returned Cast makes the fp32 output."""
    _rename(graph, name, f"{name}_fp16")
    return helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT, name=f"{name}_to_fp32")


def check_model(model: ModelProto) -> None:
    """onnx.checker with shape inference (plugin nodes are checked against their registered schema)."""
    from tokcomp.export.onnx_ops import register_schemas

    register_schemas()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TokcompError(f"onnx.checker rejects the exported graph: {str(exc).splitlines()[0]}") from None
