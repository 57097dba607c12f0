"""Slice every vocabulary-indexed tensor of a transformers model to the kept ids, in place.

Aliases are found by tensor identity, not by config flags: mBART's shared,
encoder.embed_tokens, decoder.embed_tokens and lm_head hold one Parameter, BERT's
cls.predictions.bias is also cls.predictions.decoder.bias. Each distinct tensor is
sliced once and the same new tensor is set on every alias, so ties survive and a
freshly built model (tie_word_embeddings from config.json) has the same sharing.
Module classes stay (scaled embeddings keep embed_scale); resize_token_embeddings
and tie_weights are never used (they keep the first n rows, and re-tie untied heads).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tokcomp.errors import TokcompError
from tokcomp.vocab.ids import remap_config_ids


@dataclass
class VocabTensor:
    role: str  # "input_embedding", "output_head", "bias", "buffer"
    names: list[str]  # every qualified name it is reachable under
    axis: int  # the vocabulary axis
    slots: list[tuple[nn.Module, str, bool]]  # (module, attribute, is_buffer)
    tensor: torch.Tensor


def vocab_rows(model: nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[0]


def find_vocab_tensors(model: nn.Module) -> list[VocabTensor]:
    """Every distinct parameter / buffer with a vocabulary-sized axis, with all its aliases."""
    rows = vocab_rows(model)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    found: dict[int, VocabTensor] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, tensor, is_buffer in _own_tensors(module):
            if rows not in tensor.shape:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            entry = found.get(id(tensor))
            if entry is None:
                role = _role(tensor, embedding, head_weight, is_buffer)
                entry = found[id(tensor)] = VocabTensor(role, [], _axis(name, tensor, rows, role), [], tensor)
            entry.names.append(name)
            entry.slots.append((module, attr, is_buffer))
    return list(found.values())


def slice_model(model: nn.Module, kept: np.ndarray, old2new: np.ndarray) -> list[VocabTensor]:
    """Slice every vocabulary tensor to the kept old ids; update sizes, padding_idx and vocab_size fields."""
    rows = vocab_rows(model)
    if kept.max() >= rows:
        raise TokcompError(
            f"the tokenizer keeps id {int(kept.max())} but the model has only {rows} embedding rows",
            hint="the tokenizer does not belong to this model",
        )
    index = torch.from_numpy(kept)
    tensors = find_vocab_tensors(model)
    for entry in tensors:
        old = entry.tensor
        data = old.detach().index_select(entry.axis, index).clone()
        new = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
        for module, attr, is_buffer in entry.slots:
            if is_buffer:
                module._buffers[attr] = new
            else:
                module._parameters[attr] = new
    n = len(kept)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight.shape[0] == n and module.num_embeddings == rows:
            module.num_embeddings = n
            if module.padding_idx is not None:
                module.padding_idx = _new_id(old2new, module.padding_idx, "an embedding's padding_idx")
        if isinstance(module, nn.Linear) and module.weight.shape[0] == n and module.out_features == rows:
            module.out_features = n
        if getattr(module, "vocab_size", None) == rows and not isinstance(module.vocab_size, bool):
            module.vocab_size = n
    _update_config_sizes(model, rows, n)
    remap_config_ids(model, lambda field, i: _new_id(old2new, i, field))
    return tensors


def leftover_vocab_tensors(model: nn.Module, old_rows: int) -> list[str]:
    """Names of tensors that still have the old vocabulary size on some axis (should be none)."""
    out = []
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        if old_rows in tensor.shape:
            out.append(f"{name} {tuple(tensor.shape)}")
    return out


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    for attr, tensor in module._parameters.items():
        if tensor is not None:
            yield attr, tensor, False
    for attr, tensor in module._buffers.items():
        if tensor is not None:
            yield attr, tensor, True


def _role(tensor, embedding, head_weight, is_buffer: bool) -> str:
    if tensor is embedding:
        return "input_embedding"
    if head_weight is not None and tensor is head_weight:
        return "output_head"
    return "buffer" if is_buffer else "bias"


def _axis(name: str, tensor: torch.Tensor, rows: int, role: str) -> int:
    axes = [a for a, size in enumerate(tensor.shape) if size == rows]
    if role in ("input_embedding", "output_head"):
        if tensor.dim() == 2 and tensor.shape[0] == rows:
            return 0
    elif len(axes) == 1 and all(size == 1 for a, size in enumerate(tensor.shape) if a != axes[0]):
        # A per-token bias ([V], or [1, V] like final_logits_bias) is sliced along its one long axis.
        return axes[0]
    raise TokcompError(
        f"cannot tell how tensor {name} {tuple(tensor.shape)} indexes the {rows}-token vocabulary",
        hint="vocab_trim slices embeddings, output heads and per-token biases; this model has another kind",
    )


def _update_config_sizes(model: nn.Module, rows: int, n: int) -> None:
    from transformers import PretrainedConfig

    def configs(config) -> Iterator:
        yield config
        for value in vars(config).values():
            if isinstance(value, PretrainedConfig):
                yield from configs(value)

    updated = False
    for config in configs(model.config):
        if getattr(config, "vocab_size", None) == rows:
            config.vocab_size = n
            updated = True
    if not updated:
        raise TokcompError(
            f"no config of {type(model).__name__} has vocab_size {rows} (its embedding rows)",
            hint="the config and the weights disagree; fix config.vocab_size before trimming",
        )


def _new_id(old2new: np.ndarray, old: int, what: str) -> int:
    if old >= len(old2new) or old2new[old] < 0:
        raise TokcompError(f"{what} names token {old}, which the trim dropped", hint="add it to keep_tokens")
    return int(old2new[old])
