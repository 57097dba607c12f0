"""The decoder graphs of a speech checkpoint (Whisper), exported beside its encoder.

`--format onnx` on a speech checkpoint writes three graphs, in Optimum's layout and names:

    model.onnx                    input_features [batch, mels, frames] -> last_hidden_state [batch, tokens, C + 1]
                                  (the compressed encoder, io_spec's audio branch; last channel: log(size))
    decoder_model.onnx            input_ids [batch, decoder_sequence_length], encoder_hidden_states
                                  -> logits, present.{i}.decoder.key/value, present.{i}.encoder.key/value
    decoder_with_past_model.onnx  input_ids [batch, 1], encoder_hidden_states,
                                  past_key_values.{i}.decoder.key/value [batch, heads, past_sequence_length, d],
                                  past_key_values.{i}.encoder.key/value
                                  -> logits, present.{i}.decoder.key/value (past_sequence_length + 1)

The first graph runs the forced prompt and computes every layer's cross-attention keys and
values once; each later step feeds one token and the cache back. The with-past graph still
takes `encoder_hidden_states`, for its size channel only: the cross-attention adds it to its
key logits while its keys and values come from the cache.

Both graphs run the model's own decoder modules (the size-reading cross-attention included)
on a transformers cache built from the graph's inputs, so there is one decoder implementation.
Each is validated like every export (`validate.compare_outputs`: fresh seeds, per-output atol,
the fp64 conditioning check; logits at LOGITS_ATOL_FACTOR x atol) on encoder states of the compressed encoder for Optimum's dummy
audio, random token ids, and (with past) a cache made by the first graph in PyTorch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from tokcomp.export.io_spec import BATCH_AXIS
from tokcomp.export.validate import declared_axes

FILES = {"decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"}
DECODER_AXIS = "decoder_sequence_length"
PAST_AXIS = "past_sequence_length"
PROMPT_LENGTH = 3  # traced and validated prompt length (Whisper's forced prompts are 1-4 tokens)
# Logits are held to 10x the export's atol (1e-3 at the default): over a 51,865-token vocabulary fp32
# rounding alone reaches 1e-4 (whisper-base: PyTorch fp32 9.3e-5 from fp64, ONNX Runtime 1.4e-4 from fp32).
LOGITS_ATOL_FACTOR = 10
_PARTS = [(part, kind) for part in ("decoder", "encoder") for kind in ("key", "value")]


def cache_names(prefix: str, layers: int, parts: tuple[str, ...] = ("decoder", "encoder")) -> list[str]:
    """Optimum's cache names, per layer: {prefix}.{i}.decoder.key, .decoder.value, .encoder.key, .encoder.value."""
    return [f"{prefix}.{i}.{part}.{kind}" for i in range(layers) for part, kind in _PARTS if part in parts]


class DecoderGraph(nn.Module):
    """The model's decoder and output projection as one graph: positional inputs -> (logits, *present)."""

    def __init__(self, model: nn.Module, with_past: bool):
        super().__init__()
        self.model = model
        self.with_past = with_past
        self.layers = len(model.get_decoder().layers)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """inputs: input_ids, encoder_hidden_states, then (with past) the cache in `cache_names` order."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        input_ids, encoder_hidden_states, *past = inputs
        own, cross = DynamicCache(), DynamicCache()
        for i in range(self.layers if self.with_past else 0):
            key, value, cross_key, cross_value = past[4 * i : 4 * i + 4]
            own.update(key, value, i)
            cross.update(cross_key, cross_value, i)
        cache = EncoderDecoderCache(own, cross)
        for i in range(self.layers if self.with_past else 0):
            cache.is_updated[i] = True  # cross-attention reads its keys and values from the cache
        out = self.model.get_decoder()(
            input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, cache=cache, use_cache=True
        )
        present = []
        for i in range(self.layers):
            present += [own.layers[i].keys, own.layers[i].values]
            if not self.with_past:
                present += [cross.layers[i].keys, cross.layers[i].values]
        return (self.model.get_output_embeddings()(out.last_hidden_state), *present)


@dataclass(frozen=True)
class DecoderSpec:
    """What validate.compare_outputs and onnx_export need of a spec, for one decoder graph."""

    component: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    axes: dict[str, dict[int, str]]
    max_sequence_length: int
    make_inputs: Callable[[int, int], dict[str, Tensor]] = field(repr=False)
    task: str = "automatic-speech-recognition"
    modality: str = "audio"
    dynamic_sequence: bool = False  # compare_outputs: one draw per batch size, at the inputs' own lengths
    validation_lengths: tuple[None, ...] = (None,)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return self.axes

    def dummy_inputs(self, batch_size: int, seed: int, length: int | None = None) -> dict[str, Tensor]:
        return self.make_inputs(batch_size, seed)


def decoder_specs(model: nn.Module, encoder_states: Callable[[int, int], Tensor]) -> dict[str, tuple[DecoderGraph, DecoderSpec]]:
    """component -> (graph module, spec) for `decoder` and `decoder_with_past`.

    `encoder_states(batch, seed)`: the compressed encoder's output for the dummy audio of that seed.
    """
    config = model.config
    layers = len(model.get_decoder().layers)
    first, step = DecoderGraph(model, with_past=False).eval(), DecoderGraph(model, with_past=True).eval()
    past_inputs = cache_names("past_key_values", layers)
    batch = {0: BATCH_AXIS}

    def prompt(batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, config.vocab_size, (batch_size, PROMPT_LENGTH + 1), generator=generator)
        return ids, encoder_states(batch_size, seed)

    def first_inputs(batch_size: int, seed: int) -> dict[str, Tensor]:
        ids, states = prompt(batch_size, seed)
        return {"input_ids": ids[:, :PROMPT_LENGTH], "encoder_hidden_states": states}

    def step_inputs(batch_size: int, seed: int) -> dict[str, Tensor]:
        ids, states = prompt(batch_size, seed)
        with torch.inference_mode():
            present = first(ids[:, :PROMPT_LENGTH], states)[1:]
        return {"input_ids": ids[:, PROMPT_LENGTH:], "encoder_hidden_states": states} | dict(zip(past_inputs, present, strict=True))

    def past_axes(name: str) -> dict[int, str]:
        return {0: BATCH_AXIS, 2: PAST_AXIS} if ".decoder." in name else dict(batch)

    first_spec = DecoderSpec(
        "decoder",
        ("input_ids", "encoder_hidden_states"),
        ("logits", *cache_names("present", layers)),
        {"input_ids": {0: BATCH_AXIS, 1: DECODER_AXIS}, "encoder_hidden_states": dict(batch)},
        int(config.max_target_positions),
        first_inputs,
    )
    step_spec = DecoderSpec(
        "decoder_with_past",
        ("input_ids", "encoder_hidden_states", *past_inputs),
        ("logits", *cache_names("present", layers, parts=("decoder",))),
        {"input_ids": dict(batch), "encoder_hidden_states": dict(batch)} | {name: past_axes(name) for name in past_inputs},
        int(config.max_target_positions),
        step_inputs,
    )
    return {"decoder": (first, first_spec), "decoder_with_past": (step, step_spec)}


def check_decoder_signature(model: onnx.ModelProto, spec: DecoderSpec) -> dict[str, list[int | str]]:
    """Names in order and the declared dynamic axes named as in the spec; returns name -> dims."""
    from tokcomp.export.validate import ExportValidationError

    axes = declared_axes(model)
    problems = []
    if [i.name for i in model.graph.input] != list(spec.input_names):
        problems.append(f"inputs are {[i.name for i in model.graph.input]}, expected {list(spec.input_names)}")
    if [o.name for o in model.graph.output] != list(spec.output_names):
        problems.append(f"outputs are {[o.name for o in model.graph.output]}, expected {list(spec.output_names)}")
    for name, wanted in spec.axes.items():
        dims = axes.get(name, [])
        for axis, axis_name in wanted.items():
            if len(dims) <= axis or dims[axis] != axis_name:
                problems.append(f"{name}: axis {axis} is {dims[axis] if len(dims) > axis else None}, expected {axis_name!r}")
    if problems:
        raise ExportValidationError(f"exported {spec.component} graph signature is wrong: " + "; ".join(problems))
    return axes


def entry_fields(spec: DecoderSpec, axes: dict[str, list[int | str]], layers: int) -> dict[str, Any]:
    """The tokcomp.json fields of one decoder graph that differ from the encoder's."""
    dynamic: dict[str, list[str]] = {}
    for name, dims in spec.axes.items():
        for axis_name in dims.values():
            dynamic.setdefault(axis_name, []).append(name)
    return {
        "component": spec.component,
        "inputs": {name: axes[name] for name in spec.input_names},
        "outputs": {name: axes[name] for name in spec.output_names},
        "dynamic_axes": dynamic,
        "decoder_layers": layers,
        "max_sequence_length": spec.max_sequence_length,
    }


def export_decoders(subject, atol, batch_sizes, stack: contextlib.ExitStack) -> list[dict[str, Any]]:
    """Export and validate both decoder graphs of `subject` (an ExportSubject of a speech checkpoint).

    Each file is written to a temporary path held open by `stack`: they replace their targets
    only when the caller's whole export (encoder included) has succeeded.
    """
    from tokcomp.export.artifacts import atomic_file, base_entry
    from tokcomp.export.onnx_export import export_onnx
    from tokcomp.export.onnx_formats import op_counts, save_model
    from tokcomp.export.onnx_ops import STANDARD_OPSET
    from tokcomp.export.tensorrt_onnx import check_model
    from tokcomp.export.validate import compare_onnx

    model = subject.wrapper.model

    def encoder_states(batch_size: int, seed: int) -> Tensor:
        inputs = subject.spec.dummy_inputs(batch_size, seed)
        with torch.inference_mode():
            return subject.wrapper(*inputs.values())[0]

    entries = []
    for component, (graph, spec) in decoder_specs(model, encoder_states).items():
        proto = export_onnx(graph, spec, "portable")
        check_model(proto)
        axes = check_decoder_signature(proto, spec)
        tmp = stack.enter_context(atomic_file(subject.path / FILES[component]))
        save_model(proto, tmp)
        tolerances = {name: atol for name in spec.output_names} | {"logits": atol * LOGITS_ATOL_FACTOR}
        validation = compare_onnx(tmp, graph, spec, batch_sizes, tolerances)
        fields = entry_fields(spec, axes, graph.layers)
        entry = base_entry("onnx", FILES[component], subject, flavour="portable", opset=STANDARD_OPSET)
        entries.append(
            entry | fields | {"ops": op_counts(proto), "validation": validation, "size_bytes": tmp.stat().st_size}
        )
    return entries
