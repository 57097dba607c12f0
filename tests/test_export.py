"""Export: validated portable ONNX, the tokcomp-op and TensorRT flavours, AOTInductor, the CLI.

Exports are slow on 2 cores (tens of seconds each), so models are tiny (2 blocks,
17 tokens) and each export is shared by several tests through module fixtures.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import tokcomp
from tokcomp.checkpoint import read_state
from tokcomp.errors import TokcompError
from tokcomp.export import export_checkpoint
from tokcomp.export.io_spec import ExportWrapper, io_spec
from tokcomp.export.onnx_export import export_onnx
from tokcomp.export.tensorrt_onnx import check_model, check_tensorrt_ops, make_tensorrt_flavour
from tokcomp.export.validate import ExportValidationError, check_signature, validate_onnx
from tokcomp.fileio import read_json

TOKCOMP = [sys.executable, "-m", "tokcomp.cli"]


def small_vision(kind: str = "dinov2", layers: int = 2):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTForImageClassification

    common = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, image_size=16, patch_size=4)
    if kind == "dinov2":
        model = Dinov2Model(Dinov2Config(layerscale_value=0.5, **common))
        model.config.architectures = ["Dinov2Model"]
    else:
        model = ViTForImageClassification(ViTConfig(intermediate_size=64, num_labels=5, **common))
        model.config.architectures = ["ViTForImageClassification"]
    return model.eval()


def make_checkpoint(root: Path, passes: list[dict], kind: str = "dinov2", layers: int = 2) -> Path:
    """A compiled checkpoint of a small random model (16x16 images, 17 tokens)."""
    from transformers import BitImageProcessor

    model_dir, images = root / "model", root / "images"
    small_vision(kind, layers).save_pretrained(model_dir)
    BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(model_dir)
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    recipe = {
        "model": str(model_dir),
        "passes": passes,
        "evaluation": {"data": str(images), "samples": 4, "batch_size": 4, "random_baseline": False},
    }
    return tokcomp.compile(recipe, root / "ckpt")


@pytest.fixture(scope="module")
def tome_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tome"), [{"type": "tome", "r": 2}])


@pytest.fixture(scope="module")
def exported(tome_ckpt):
    """One CLI run: portable ONNX, then the TensorRT flavour (which exports the tokcomp flavour)."""
    result = subprocess.run(
        [*TOKCOMP, "export", str(tome_ckpt), "--format", "onnx", "--format", "onnx-tensorrt"],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKCOMP_QUIET": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return tome_ckpt, result


def _entries(ckpt: Path) -> dict[str, dict]:
    return {e["format"]: e for e in read_state(ckpt).exports}


def test_export_package_imports_nothing_heavy():
    code = (
        "import sys, tokcomp.export as e; formats = e.available_formats();"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'onnxscript', 'tensorrt', 'triton', 'optimum') if m in sys.modules];"
        "print(formats, heavy); assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1000:]
    assert "onnx-tensorrt" in result.stdout and "aoti" in result.stdout


def test_portable_onnx_matches_pytorch_and_is_recorded(exported):
    ckpt, result = exported
    entry = _entries(ckpt)["onnx"]
    validation = entry["validation"]
    assert validation["passed"] and validation["batch_sizes"] == [1, 4]
    for per_output in validation["max_abs_diff"].values():
        assert set(per_output) == {"last_hidden_state", "pooler_output"}
        assert max(per_output.values()) <= 1e-4
    model = onnx.load(str(ckpt / "model.onnx"))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # standard ops only
    # ToMe's merge sums through a one-hot MatMul (export/portable_ops.py), not a per-element ScatterElements
    scatters = [n for n in model.graph.node if n.op_type == "ScatterElements"]
    assert b"add" not in [a.s for n in scatters for a in n.attribute if a.name == "reduction"]
    assert str((ckpt / "model.onnx").resolve()) in result.stdout
    # Optimum's layout and names: model.onnx beside config.json, pixel_values -> last_hidden_state, pooler_output.
    assert (ckpt / "config.json").is_file()
    tokens = read_state(ckpt).tokens_per_layer[-1]
    assert entry["inputs"] == {"pixel_values": ["batch_size", 3, 16, 16]}
    assert entry["outputs"] == {"last_hidden_state": ["batch_size", tokens, 32], "pooler_output": ["batch_size", 32]}


def test_declared_dynamic_batch_runs_at_a_new_batch_size(exported):
    ckpt, _ = exported
    session = ort.InferenceSession(str(ckpt / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 16, 16)
    hidden, pooled = session.run(None, {"pixel_values": x.numpy()})
    reference = tokcomp.load(ckpt)
    with torch.inference_mode():
        expected = reference(pixel_values=x)
    assert hidden.shape == tuple(expected.last_hidden_state.shape)
    assert np.abs(hidden - expected.last_hidden_state.numpy()).max() < 1e-4
    assert np.abs(pooled - expected.pooler_output.numpy()).max() < 1e-4


def test_tokcomp_flavour_has_one_node_per_merge_with_function_bodies(exported):
    ckpt, _ = exported
    entry = _entries(ckpt)["onnx-tokcomp"]
    assert entry["validation"]["passed"] and entry["tokcomp_ops"] == ["IndexMerge"]
    model = onnx.load(str(ckpt / "model.tokcomp.onnx"))
    merges = [n for n in model.graph.node if n.domain == "tokcomp"]
    reducers = sum(r > 0 for r in read_state(ckpt).passes[0].metadata["r_per_layer"])
    assert [n.op_type for n in merges] == ["IndexMerge"] * reducers and reducers == 2
    assert [f.name for f in model.functions] == ["IndexMerge"]
    assert max(d for b in entry["validation"]["max_abs_diff"].values() for d in b.values()) <= 1e-4


def test_tensorrt_flavour_strips_bodies_sets_plugin_attributes_and_passes_checks(exported):
    ckpt, _ = exported
    entry = _entries(ckpt)["onnx-tensorrt"]
    model = onnx.load(str(ckpt / "model.tensorrt.onnx"))
    assert not model.functions
    plugin_nodes = [n for n in model.graph.node if n.domain == "tokcomp"]
    assert plugin_nodes and all(
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        == {"plugin_version": b"1", "plugin_namespace": b"tokcomp", "aot": 1}
        for n in plugin_nodes
    )
    check_model(model)
    report = check_tensorrt_ops(model)
    assert report["plugins"] == ["IndexMerge"] and report["unsupported"] == []
    assert report["ops"]["TopK"] >= 2 and entry["tensorrt_check"] == report
    manifest = read_json(ckpt / entry["plugin_manifest"])
    assert [p["name"] for p in manifest["plugins"]] == ["IndexMerge"]
    assert manifest["module"] == "tokcomp.plugins_cuda.tensorrt_plugins"


def test_tensorrt_op_check_rejects_what_the_parser_cannot_import():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", 8])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["k"], axis=0),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1),  # K computed at run time
        helper.make_node("Unique", ["x"], ["u"]),  # no TensorRT importer
        helper.make_node("GatherTokens", ["x", "i"], ["g"], domain="tokcomp"),  # no plugin attributes
    ]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("g", TensorProto.FLOAT, None)], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("tokcomp", 1)])
    with pytest.raises(TokcompError) as excinfo:
        check_tensorrt_ops(model)
    message = str(excinfo.value)
    assert "TopK" in message and "initializer" in message
    assert "Unique" in message and "plugin_namespace" in message


def test_tensorrt_flavour_refuses_a_tokcomp_op_without_a_plugin():
    """An earlier version's TransformApply (then rewritten to MatMul) has no plugin now: refused by name."""
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("transform", "t", "out")]
    node = helper.make_node("TransformApply", ["transform", "t"], ["out"], domain="tokcomp")
    graph = helper.make_graph([node], "g", values[:2], values[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("tokcomp", 1)])
    with pytest.raises(TokcompError, match="tokcomp op TransformApply has no TensorRT plugin"):
        make_tensorrt_flavour(model)


def test_validation_mismatch_fails_with_numbers(exported):
    ckpt, _ = exported
    model = tokcomp.load(ckpt)
    spec = io_spec(model, "transformers", "image", 16, None)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.layernorm.bias.add_(1e-2)
    with pytest.raises(ExportValidationError) as excinfo:
        validate_onnx(ckpt / "model.onnx", ExportWrapper(perturbed, spec, "transformers"), spec)
    message = str(excinfo.value)
    assert "batch 1 last_hidden_state: max |diff|" in message and "> atol 0.0001" in message


def test_signature_check_rejects_a_static_batch(exported):
    ckpt, _ = exported
    model = onnx.load(str(ckpt / "model.onnx"), load_external_data=False)
    spec = io_spec(tokcomp.load(ckpt), "transformers", "image", 16, None)
    check_signature(model, spec)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(ExportValidationError, match="axis 0 is \\[4\\], expected dynamic 'batch_size'"):
        check_signature(model, spec)


def test_cli_rejects_unknown_format_in_one_line(tome_ckpt):
    result = subprocess.run([*TOKCOMP, "export", str(tome_ckpt), "--format", "tflite"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown export format 'tflite'" in result.stderr and "onnx-tensorrt" in result.stderr
    assert "Traceback" not in result.stderr


def test_text_model_exports_with_padding_mask(tmp_path):
    """BERT-family: input_ids/attention_mask/token_type_ids -> last_hidden_state, pooler_output; padding varies."""
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    model = BertModel(config).eval()
    tokcomp.apply(model, [{"type": "tome", "r": 3}])
    spec = io_spec(model, "transformers", "text", None, 12)
    assert spec.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert spec.output_names == ("last_hidden_state", "pooler_output")
    wrapper = ExportWrapper(model, spec, "transformers")
    path = tmp_path / "model.onnx"
    onnx.save_model(export_onnx(wrapper, spec, "portable"), str(path))
    report = validate_onnx(path, wrapper, spec)
    assert report["passed"] and max(d for b in report["max_abs_diff"].values() for d in b.values()) <= 1e-4
    assert spec.dummy_inputs(4, seed=20_004)["attention_mask"].sum(1).min() < 12  # validation inputs are padded


def test_torch_export_of_the_compressed_model_succeeds(tome_ckpt):
    from tokcomp.export.aoti import export_program
    from tokcomp.export.artifacts import open_subject

    subject = open_subject(tome_ckpt)
    program = export_program(subject)
    x = subject.spec.dummy_inputs(3, seed=5)["pixel_values"]
    with torch.inference_mode():
        got = program.module()(x)
        want = subject.wrapper(x)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want, strict=True))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("TOKCOMP_RUN_AOTI_CPU") != "1",
    reason="AOTInductor CPU compile takes ~2 min even for a 2-block model on 2 cores; set TOKCOMP_RUN_AOTI_CPU=1",
)
def test_aoti_package_loads_without_tokcomp(tome_ckpt):
    entry = export_checkpoint(tome_ckpt, "aoti", device="cpu")
    assert entry["validation"]["passed"]
    code = (
        "import sys, torch; runner = torch._inductor.aoti_load_package(sys.argv[1]);"
        "out = runner(torch.rand(5, 3, 16, 16)); assert 'tokcomp' not in sys.modules; print(tuple(out[0].shape))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tome_ckpt / "model.pt2")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.startswith("(5, ")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AOTInductor CUDA package)")
def test_aoti_cuda_package(tome_ckpt):
    entry = export_checkpoint(tome_ckpt, "aoti", device="cuda")
    assert entry["device"] == "cuda" and entry["validation"]["passed"]


def test_tensorrt_format_without_tensorrt_fails_with_the_fix(tome_ckpt):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present: the engine test (tests/test_plugins.py) covers this format")
    with pytest.raises(TokcompError, match="TensorRT|CUDA GPU"):
        export_checkpoint(tome_ckpt, "tensorrt")
    assert not (tome_ckpt / "model.engine").exists()
