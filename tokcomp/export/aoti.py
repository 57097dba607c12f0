"""`aoti`: an AOTInductor package (model.pt2) of the compressed model, for serving.

The package holds compiled kernels and weights (no pickle); it loads with plain
PyTorch, without tokcomp:

    runner = torch._inductor.aoti_load_package("model.pt2")
    last_hidden_state, pooler_output = runner(pixel_values)

It is compiled from the portable graph (standard aten ops only), so Inductor
generates and fuses its own gather/scatter kernels and no tokcomp op has to be
registered at load time. A package is device-specific: compile it on the kind of
device it will serve on (`device="cuda"` on a GPU machine).

The caller's model is never moved: an ExportedProgram shares the Parameter objects
of the module it was exported from, so moving that module afterwards (as validation
on CPU once did) would change the weights the package is compiled with. The export
takes a copy on the target device instead. Compile and validation run without TF32
(`validate.full_fp32`), so an fp32 package is checked at fp32 precision.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from tokcomp.errors import TokcompError
from tokcomp.export.artifacts import ExportSubject, atomic_file, base_entry
from tokcomp.export.onnx_export import dynamic_shapes
from tokcomp.export.validate import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, compare_outputs, full_fp32

FILE = "model.pt2"


def export_program(subject: ExportSubject, device: str = "cpu", example_batch: int = 2) -> torch.export.ExportedProgram:
    """torch.export of a copy of the compressed model on `device`, with a dynamic batch axis.

    The program owns the copy's weights; `subject.wrapper` stays where and what it was.
    """
    wrapper = copy.deepcopy(subject.wrapper).to(device)
    inputs = subject.spec.dummy_inputs(example_batch, seed=1234)
    args = tuple(inputs[name].to(device) for name in subject.spec.input_names)
    shapes = dynamic_shapes(subject.spec)
    with torch.no_grad():
        return torch.export.export(wrapper, args, dynamic_shapes=(tuple(shapes[n] for n in subject.spec.input_names),))


def _device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TokcompError("AOTInductor export for CUDA needs a CUDA GPU", hint="use device=cpu or run on a GPU machine")
    return device


def export_aoti(
    subject: ExportSubject, device: str | None = None, atol=DEFAULT_ATOL, batch_sizes=DEFAULT_BATCH_SIZES
) -> list[dict[str, Any]]:
    device = _device(device)
    started = time.perf_counter()
    program = export_program(subject, device)  # subject.wrapper stays the CPU reference for validation
    target = subject.path / FILE
    with atomic_file(target) as tmp:
        tmp.unlink()  # the packager writes the file itself
        with full_fp32():
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
        compile_s = time.perf_counter() - started
        runner = torch._inductor.aoti_load_package(str(tmp))

        def run(inputs):
            with torch.inference_mode():
                outputs = runner(*(inputs[n].to(device) for n in subject.spec.input_names))
            return [o.float().cpu().numpy() for o in outputs]

        validation = compare_outputs(
            run, subject.wrapper, subject.spec, batch_sizes, atol, runtime=f"AOTInductor ({device})"
        )
    return [
        base_entry(
            "aoti",
            FILE,
            subject,
            device=device,
            compile_seconds=round(compile_s, 1),
            validation=validation,
            size_bytes=target.stat().st_size,
            load="torch._inductor.aoti_load_package(path)(*inputs) -> outputs in the order of 'outputs'",
        )
    ]
