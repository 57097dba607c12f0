"""Inputs and outputs of an exported model, following Hugging Face Optimum's conventions.

Optimum core does the model-facing work: TasksManager infers the task from the model
class, normalized configs read vocabulary size / channels under one name, and its
dummy input generators make the inputs (random pixels; token ids with right
padding). Names follow Optimum's ONNX configs and ORTModel classes:

    vision: pixel_values -> last_hidden_state (+ pooler_output) | logits
    text:   input_ids, attention_mask (+ token_type_ids) -> last_hidden_state (+ pooler_output) | logits
    audio:  input_features -> last_hidden_state (the encoder of a speech model: automatic-speech-recognition)

The batch axis is always dynamic. Text exports in ONNX also have a dynamic
`sequence_length` axis (any length up to the model's maximum, dynamic padding
included: budgets are rates of each sample's own tokens), and a token-reduced text
model adds the output `token_weights` [batch, tokens]: the input tokens each output
token stands for, 0 for padding rows, which is what pooling needs. Image size, and
the sequence length of the other formats (TensorRT, AOTInductor), are static.

Audio: the graph is the model's encoder (`model.get_encoder()`), its log-mel window
static ([batch, mel bins, frames]); the decoder graphs of a speech checkpoint are
described by tokcomp.export.speech.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError

BATCH_AXIS = "batch_size"
SEQUENCE_AXIS = "sequence_length"
WEIGHTS_OUTPUT = "token_weights"
MIN_SEQUENCE_LENGTH = 2  # a sentence is at least its CLS and SEP tokens
SUPPORTED_TASKS = ("feature-extraction", "image-classification", "text-classification", "automatic-speech-recognition")
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
    dynamic_sequence: bool = False  # text only: the sequence axis is dynamic, up to max_sequence_length
    max_sequence_length: int | None = None
    feature_size: int | None = None  # audio: mel bins
    frames: int | None = None  # audio: feature frames of the window (3,000 for Whisper's 30 s)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """input -> {axis: name} of its dynamic axes: batch always, the sequence axis of dynamic text."""
        axes = {0: BATCH_AXIS, 1: SEQUENCE_AXIS} if self.dynamic_sequence else {0: BATCH_AXIS}
        return {name: dict(axes) for name in self.input_names}

    @property
    def validation_lengths(self) -> tuple[int | None, ...]:
        """Sequence lengths validation runs at: several for a dynamic axis, else the static one (None)."""
        if not self.dynamic_sequence:
            return (None,)
        top = min(128, self.max_sequence_length or 128)
        return tuple(sorted({min(n, top) for n in (3, 17, 64, 128)}))

    def dummy_inputs(self, batch_size: int, seed: int, length: int | None = None) -> dict[str, Tensor]:
        """Inputs from Optimum's generators, reproducible from `seed` (fresh per seed).

        With a dynamic sequence axis, text inputs are `length` long (default: the reference
        length) and dynamically padded: sample 0 fills the length, the others have random
        real lengths, padded on the right.
        """
        if self.dynamic_sequence:
            return self._padded_text(batch_size, seed, length or self.sequence_length)
        from optimum.utils.input_generators import (
            DummyAudioInputGenerator,
            DummyTextInputGenerator,
            DummyVisionInputGenerator,
        )
        from optimum.utils.normalized_config import NormalizedConfig, NormalizedTextConfig, NormalizedVisionConfig

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
            if self.modality == "audio":  # log-mel features uniform in [-1, 1], Whisper's normalised range
                gen = DummyAudioInputGenerator(
                    self.task,
                    NormalizedConfig(SimpleNamespace()),
                    batch_size=batch_size,
                    feature_size=self.feature_size,
                    nb_max_frames=self.frames,
                )
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

    def _padded_text(self, batch_size: int, seed: int, length: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (batch_size, length), generator=generator)
        real = torch.randint(min(MIN_SEQUENCE_LENGTH, length), length + 1, (batch_size,), generator=generator)
        real[0] = length
        mask = (torch.arange(length)[None] < real[:, None]).long()
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        return {name: inputs[name] for name in self.input_names}


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


def io_spec(
    model: nn.Module,
    library: str,
    modality: str,
    image_size: int | None,
    sequence_length: int | None,
    task: str | None = None,
    dynamic_sequence: bool = False,
) -> IOSpec:
    """What the exported graph takes and returns; `dynamic_sequence` applies to text models only."""
    task = task or infer_task(model, library)
    if task not in SUPPORTED_TASKS:
        raise TokcompError(f"export task '{task}' is not supported", hint=f"supported: {', '.join(SUPPORTED_TASKS)}")
    config = getattr(model, "config", None)
    if modality == "image":
        inputs = ("pixel_values",)
        channels = int(getattr(config, "num_channels", 3) or 3)
        spec = IOSpec(task, modality, inputs, (), image_size=image_size, num_channels=channels)
    elif modality == "audio":
        encoder = model.get_encoder()
        spec = IOSpec(
            task,
            modality,
            ("input_features",),
            (),
            sequence_length=sequence_length,
            feature_size=int(config.num_mel_bins),
            frames=sequence_length * _time_stride(encoder),
        )
    else:
        inputs = ["input_ids", "attention_mask"]
        accepts = inspect.signature(model.forward).parameters
        if "token_type_ids" in accepts and int(getattr(config, "type_vocab_size", 0) or 0) > 1:
            inputs.append("token_type_ids")
        spec = IOSpec(
            task,
            modality,
            tuple(inputs),
            (),
            sequence_length=sequence_length,
            vocab_size=config.vocab_size,
            dynamic_sequence=dynamic_sequence,
            max_sequence_length=getattr(config, "max_position_embeddings", None),
        )
    return IOSpec(**{**vars(spec), "output_names": _output_names(model, spec)})


def _time_stride(encoder: nn.Module) -> int:
    """Feature frames per encoder token: the product of the strides of the encoder's 1-d convolutions."""
    stride = 1
    for module in encoder.modules():
        if isinstance(module, nn.Conv1d):
            stride *= module.stride[0]
    return stride


def _output_names(model: nn.Module, spec: IOSpec) -> tuple[str, ...]:
    from tokcomp.surgery import token_blocks

    if spec.modality == "audio":
        return ("last_hidden_state",)  # the encoder's states, the decoder's input
    if spec.task != "feature-extraction":
        return ("logits",)
    with torch.inference_mode():
        outputs = model(**spec.dummy_inputs(1, seed=0))
    names = tuple(name for name in _FEATURE_OUTPUTS if getattr(outputs, name, None) is not None)
    # Pooling a token-reduced sentence needs each output token's size (the export cannot pool for the user).
    if spec.dynamic_sequence and token_blocks(model) and "last_hidden_state" in names:
        names += (WEIGHTS_OUTPUT,)
    return names


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
        kwargs = dict(zip(self.spec.input_names, inputs, strict=True))
        if self.spec.modality == "audio":
            return (self.model.get_encoder()(**kwargs).last_hidden_state,)
        if WEIGHTS_OUTPUT not in self.spec.output_names:
            outputs = self.model(**kwargs)
            return tuple(getattr(outputs, name) for name in self.spec.output_names)
        from tokcomp.pooling import run_with_token_weights

        outputs, weights = run_with_token_weights(self.model, **kwargs)
        return tuple(weights if name == WEIGHTS_OUTPUT else getattr(outputs, name) for name in self.spec.output_names)
