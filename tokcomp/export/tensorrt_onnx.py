"""The TensorRT flavour of a tokcomp-op ONNX graph, and the check that TensorRT can parse it.

TensorRT's ONNX parser treats an unknown op_type as a plugin name and reads the
node attributes plugin_version / plugin_namespace (and `aot`, to pick the
ahead-of-time implementation). A model-local function of the same name would be
used instead of the plugin, so the flavour strips the function bodies. The
TransformApply step is a MatMul, which TensorRT runs natively (no plugin needed).

`check_tensorrt_ops` lists every op of the graph and fails on any op TensorRT 10's
ONNX parser does not support, or on the parser's documented restrictions (TopK's K
must be an initializer below 3840; ScatterND has no reduction).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

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
    """Copy of a tokcomp-op model: bodies removed, plugin attributes set, TransformApply -> MatMul."""
    out = copy.deepcopy(model)
    kept = [f for f in out.functions if f.domain != NAMESPACE]
    del out.functions[:]
    out.functions.extend(kept)
    for node in out.graph.node:
        if node.domain != NAMESPACE:
            continue
        if node.op_type == "TransformApply":
            node.op_type, node.domain = "MatMul", ""
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


def check_model(model: ModelProto) -> None:
    """onnx.checker with shape inference (plugin nodes are checked against their registered schema)."""
    from tokcomp.export.onnx_ops import register_schemas

    register_schemas()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TokcompError(f"onnx.checker rejects the exported graph: {str(exc).splitlines()[0]}") from None
