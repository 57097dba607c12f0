"""Token ids named in a model's config and generation config: find them all, remap them all.

A trimmed model whose config still says eos_token_id=106 after token 106 moved would
stop generating at the wrong token, silently; so every id-valued field is found by
name, not by a fixed list of the fields one family uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from tokcomp.errors import TokcompError

# Fields whose value is a token id, a list of ids, or nested lists of ids.
_ID_FIELD = re.compile(r".*_(token_id|token_ids|token_index|token_indices)$")
_ID_LISTS = {"suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "eos_token_id", "bos_token_id"}
# forced_decoder_ids holds [position, token id] pairs: only the second item is an id.
_PAIR_LISTS = {"forced_decoder_ids"}
# Whisper's generation config maps token strings to ids: {"<|en|>": 50259}, {"transcribe": 50360}.
_ID_MAPS = re.compile(r".*_to_id$")
# Generation settings that name tokens in a form this module does not rewrite.
_UNSUPPORTED = {"sequence_bias", "watermarking_config"}


def is_id_field(name: str) -> bool:
    return bool(_ID_FIELD.fullmatch(name)) or name in _ID_LISTS or name in _PAIR_LISTS or bool(_ID_MAPS.fullmatch(name))


def _configs(model) -> Iterator[tuple[str, Any]]:
    """(prefix, config object) for the model config, its nested sub-configs, and the generation config."""
    from transformers import PretrainedConfig

    def walk(prefix: str, config) -> Iterator[tuple[str, Any]]:
        yield prefix, config
        for key, value in vars(config).items():
            if isinstance(value, PretrainedConfig):
                yield from walk(f"{prefix}.{key}", value)

    yield from walk("config", model.config)
    if getattr(model, "generation_config", None) is not None:
        yield "generation_config", model.generation_config


def _ids_in(value: Any, pairs: bool = False) -> Iterator[int]:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _ids_in(item)
    elif isinstance(value, (list, tuple)):
        if pairs:
            for item in value:
                yield from _ids_in(item[1])
        else:
            for item in value:
                yield from _ids_in(item)


def config_token_ids(model) -> dict[str, list[int]]:
    """{"config.eos_token_id": [1], ...}: every non-negative id the configs name."""
    found: dict[str, list[int]] = {}
    for prefix, config in _configs(model):
        for key, value in vars(config).items():
            if key in _UNSUPPORTED and value:
                raise TokcompError(
                    f"{prefix}.{key} is set; vocab_trim cannot remap its token ids",
                    hint=f"clear {key} before trimming, or set it again afterwards",
                )
            if is_id_field(key):
                ids = [i for i in _ids_in(value, key in _PAIR_LISTS) if i >= 0]
                if ids:
                    found[f"{prefix}.{key}"] = ids
    return found


def remap_config_ids(model, remap: Callable[[str, int], int]) -> dict[str, Any]:
    """Rewrite every id field in place with remap(field, old_id); returns {field: new value}."""
    changed: dict[str, Any] = {}
    for prefix, config in _configs(model):
        for key, value in list(vars(config).items()):
            if not is_id_field(key) or value is None or isinstance(value, bool):
                continue
            name = f"{prefix}.{key}"
            new = _map_value(value, lambda i: remap(name, i) if i >= 0 else i, key in _PAIR_LISTS)
            if new != value:
                setattr(config, key, new)
                changed[name] = new
    return changed


def _map_value(value: Any, fn: Callable[[int], int], pairs: bool) -> Any:
    if isinstance(value, int):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_value(item, fn, False) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        if pairs:
            out = [[item[0], _map_value(item[1], fn, False)] for item in value]
        else:
            out = [_map_value(item, fn, False) for item in value]
        return type(value)(out) if isinstance(value, tuple) else out
    return value
