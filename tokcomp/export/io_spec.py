"""Inputs and outputs of an exported model, following Hugging Face Optimum's conventions.

Optimum core does the model-facing work: TasksManager infers the task from the model
class, normalized configs read vocabulary size / channels under one name, and its
dummy input generators make the inputs (random pixels; token ids with right
padding). Names follow Optimum's ONNX configs and ORTModel classes:

    vision: pixel_values -> last_hidden_state (+ pooler_output) | logits
    text:   input_ids, attention_mask (+ token_type_ids) -> last_hidden_state (+ pooler_output) | logits

Unlike Optimum, only the batch axis is dynamic: token counts per layer are fixed by
the compression schedule, so image size and sequence length are static.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError

BATCH_AXIS = "batch_size"
SUPPORTED_TASKS = ("feature-extraction", "image-classification", "text-classification")
_FEATURE_OUTPUTS = ("last_hidden_state", "pooler_output")


@dataclass(frozen=True)
class IOSpec:
    task: str
    modality: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    image_size: int | None = None
    num_channels: int = 3
    sequence_length: int | None = None
    vocab_size: int | None = None

    def dummy_inputs(self, batch_size: int, seed: int) -> dict[str, Tensor]:
        """Inputs from Optimum's generators, reproducible from `seed` (fresh per seed)."""
        from optimum.utils.input_generators import DummyTextInputGenerator, DummyVisionInputGenerator
        from optimum.utils.normalized_config import NormalizedTextConfig, NormalizedVisionConfig

        generator = torch.Generator().manual_seed(seed)
        state = torch.random.get_rng_state()
        torch.random.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        try:
            if self.modality == "image":
                config = NormalizedVisionConfig(
                    SimpleNamespace(image_size=self.image_size, num_channels=self.num_channels)
                )
                gen = DummyVisionInputGenerator(self.task, config, batch_size=batch_size)
                return {name: gen.generate(name, framework="pt").contiguous() for name in self.input_names}
            config = NormalizedTextConfig(SimpleNamespace(vocab_size=self.vocab_size))
            gen = DummyTextInputGenerator(self.task, config, batch_size=batch_size, sequence_length=self.sequence_length)
            inputs = {name: gen.generate(name, framework="pt") for name in self.input_names}
            if "token_type_ids" in inputs:
                inputs["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])
            if "attention_mask" in inputs:
                inputs["attention_mask"][:, 0] = 1  # CLS is always real (a fully padded row is not an input)
            return inputs
        finally:
            torch.random.set_rng_state(state)


def infer_task(model: nn.Module, library: str) -> str:
    """Optimum's task for this model class; timm VisionTransformers are classifiers."""
    if library == "timm":
        return "image-classification"
    from optimum.exporters.tasks import TasksManager

    try:
        task = TasksManager.infer_task_from_model(type(model))
    except (ValueError, KeyError):
        raise TokcompError(
            f"cannot infer the export task of {type(model).__name__}",
            hint=f"pass task=... (one of {', '.join(SUPPORTED_TASKS)})",
        ) from None
    task = TasksManager.map_from_synonym(task)
    if task == "sequence-classification":
        task = "text-classification"
    return task


def io_spec(model: nn.Module, library: str, modality: str, image_size: int | None, sequence_length: int | None, task: str | None = None) -> IOSpec:
    task = task or infer_task(model, library)
    if task not in SUPPORTED_TASKS:
        raise TokcompError(f"export task '{task}' is not supported", hint=f"supported: {', '.join(SUPPORTED_TASKS)}")
    config = getattr(model, "config", None)
    if modality == "image":
        inputs = ("pixel_values",)
        channels = int(getattr(config, "num_channels", 3) or 3)
        spec = IOSpec(task, modality, inputs, (), image_size=image_size, num_channels=channels)
    else:
        inputs = ["input_ids", "attention_mask"]
        accepts = inspect.signature(model.forward).parameters
        if "token_type_ids" in accepts and int(getattr(config, "type_vocab_size", 0) or 0) > 1:
            inputs.append("token_type_ids")
        spec = IOSpec(task, modality, tuple(inputs), (), sequence_length=sequence_length, vocab_size=config.vocab_size)
    return IOSpec(**{**vars(spec), "output_names": _output_names(model, spec)})


def _output_names(model: nn.Module, spec: IOSpec) -> tuple[str, ...]:
    if spec.task != "feature-extraction":
        return ("logits",)
    with torch.inference_mode():
        outputs = model(**spec.dummy_inputs(1, seed=0))
    return tuple(name for name in _FEATURE_OUTPUTS if getattr(outputs, name, None) is not None)


class ExportWrapper(nn.Module):
    """Positional inputs in `spec.input_names` order -> a tuple in `spec.output_names` order."""

    def __init__(self, model: nn.Module, spec: IOSpec, library: str):
        super().__init__()
        self.model = model
        self.spec = spec
        self.library = library

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if self.library == "timm":
            return (self.model(inputs[0]),)
        outputs = self.model(**dict(zip(self.spec.input_names, inputs, strict=True)))
        return tuple(getattr(outputs, name) for name in self.spec.output_names)
