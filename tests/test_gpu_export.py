"""GPU export paths, checked on CPU where the defect shows there: TF32 during validation,
AOTInductor export leaving the caller's model alone, TensorRT builder precision flags.
The CUDA runs themselves are in tests/test_gpu_kernels.py (marker `gpu`)."""

from types import SimpleNamespace

import pytest
import torch

import tokcomp
from tests.test_export import small_vision
from tests.test_export_validation import SPEC, Features, runtime
from tokcomp.export.validate import compare_outputs, full_fp32


def _tf32_state() -> dict[str, bool]:
    """Whether CUDA matmuls, cuDNN (legacy flags) and cuDNN convolutions (per-op flag) may use TF32."""
    return {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
        "conv": torch.backends.cudnn.conv.fp32_precision == "tf32",
    }


def test_validation_runs_the_runtime_and_reference_without_tf32():
    """cuDNN convolutions default to TF32 (10 mantissa bits); validation at 1e-4 must not see it."""
    model = Features()
    seen = []

    def run(inputs):
        seen.append(_tf32_state())
        return runtime(model)(inputs)

    before = _tf32_state()
    assert before["cudnn"] and before["conv"]  # torch's default for cuDNN
    report = compare_outputs(run, model, SPEC, batch_sizes=(1, 2))
    assert report["passed"] and len(seen) == 2
    assert all(state == {"matmul": False, "cudnn": False, "conv": False} for state in seen)
    assert _tf32_state() == before  # the caller's flags are back


def test_full_fp32_restores_flags_after_an_error():
    before = _tf32_state()
    with pytest.raises(RuntimeError, match="boom"), full_fp32():
        raise RuntimeError("boom")
    assert _tf32_state() == before


def test_full_fp32_after_per_op_precisions_were_set():
    """Once a caller sets cuDNN conv and RNN precisions apart, torch refuses the legacy flags: use the per-op ones."""
    conv, rnn = torch.backends.cudnn.conv, torch.backends.cudnn.rnn
    saved = (conv.fp32_precision, rnn.fp32_precision)
    conv.fp32_precision, rnn.fp32_precision = "tf32", "ieee"
    try:
        with full_fp32():
            assert (conv.fp32_precision, rnn.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, rnn.fp32_precision) == ("tf32", "ieee")
    finally:
        conv.fp32_precision, rnn.fp32_precision = saved


def _tome_subject():
    from tokcomp.export.io_spec import ExportWrapper, io_spec

    model = small_vision("dinov2")
    tokcomp.apply(model, [{"type": "tome", "r": 2}])
    spec = io_spec(model, "transformers", "image", 16, None)
    return SimpleNamespace(wrapper=ExportWrapper(model, spec, "transformers").eval(), spec=spec)


def test_aoti_export_moves_a_copy_and_leaves_the_callers_model_alone():
    """The program is exported on the target device (meta here, cuda on a GPU) from a copy."""
    from tokcomp.export.aoti import export_program

    subject = _tome_subject()
    params = dict(subject.wrapper.named_parameters())
    program = export_program(subject, device="meta")
    assert {t.device.type for t in program.state_dict.values()} == {"meta"}
    assert dict(subject.wrapper.named_parameters()) == params  # the same Parameter objects ...
    assert {p.device.type for p in params.values()} == {"cpu"}  # ... still on CPU


def test_aoti_program_keeps_its_weights_when_the_caller_changes_the_model(monkeypatch):
    """An ExportedProgram shares the Parameters of the module it was exported from, so it must be a copy's."""
    from tokcomp.export.aoti import export_program
    from tokcomp.reducers import apply

    # the traced merge's arithmetic, so that a float64 weight (shared weights) is the only possible change
    monkeypatch.setattr(apply, "in_place_path", lambda *args: False)
    subject = _tome_subject()
    x = subject.spec.dummy_inputs(2, seed=3)["pixel_values"]
    program = export_program(subject)
    with torch.inference_mode():
        want = subject.wrapper(x)
        subject.wrapper.double()  # what moving the caller's model to another device/dtype does to shared weights
        got = program.module()(x)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


class _Flags:
    """A TensorRT builder config stand-in that records set_flag / clear_flag."""

    def __init__(self):
        self.set, self.cleared = [], []

    def set_flag(self, flag):
        self.set.append(flag)

    def clear_flag(self, flag):
        self.cleared.append(flag)


def _trt(*flags: str):
    return SimpleNamespace(BuilderFlag=SimpleNamespace(**{flag: flag for flag in flags}))


@pytest.mark.parametrize("flags", [("FP16", "TF32"), ("TF32",)], ids=["tensorrt10", "tensorrt11"])
def test_fp32_engines_are_built_without_tf32(flags):
    from tokcomp.export.tensorrt_engine import configure_precision

    config = _Flags()
    assert configure_precision(_trt(*flags), config, fp16=False) == "fp32"
    assert config.cleared == ["TF32"] and config.set == []


def test_fp16_engines_use_the_flag_on_tensorrt10_and_an_fp16_graph_on_tensorrt11():
    from tokcomp.export.tensorrt_engine import configure_precision

    config = _Flags()
    assert configure_precision(_trt("FP16", "TF32"), config, fp16=True) == "fp16-flag"
    assert config.set == ["FP16"]
    config = _Flags()  # TensorRT 11 is always strongly typed: BuilderFlag.FP16 is gone
    assert configure_precision(_trt("TF32"), config, fp16=True) == "fp16-graph"
    assert config.set == [] and config.cleared == []


def test_float16_graph_computes_in_fp16_with_fp32_inputs_and_outputs(tmp_path):
    """The graph a TensorRT >= 11 fp16 engine is built from: type-consistent, fp32 I/O, close to the fp32 graph."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from tokcomp.export.onnx_export import export_onnx
    from tokcomp.export.tensorrt_onnx import float16_graph

    subject = _tome_subject()
    model = export_onnx(subject.wrapper, subject.spec, "portable")
    half = float16_graph(model)
    onnx.checker.check_model(half, full_check=True)  # every node's input types agree after the conversion
    float_io = [v.type.tensor_type.elem_type for v in list(half.graph.input) + list(half.graph.output)]
    assert set(float_io) == {onnx.TensorProto.FLOAT}
    assert not any(init.data_type == onnx.TensorProto.FLOAT for init in half.graph.initializer)

    x = subject.spec.dummy_inputs(3, seed=11)["pixel_values"].numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})
    got = ReferenceEvaluator(half).run(None, {"pixel_values": x})  # ONNX Runtime's CPU kernels lack fp16 scatter-add
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and np.abs(g - w).max() < 1e-2
