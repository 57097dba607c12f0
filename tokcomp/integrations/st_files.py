"""The sentence-transformers files of a checkpoint (modules.json, module folders), written at compile time.

Importing this module does not import sentence-transformers; the module class that loads
the checkpoint is `tokcomp.integrations.sentence_transformers.TokcompTransformer`.

A checkpoint of a sentence-transformers model keeps its module files (modules.json,
sentence_bert_config.json, the Pooling and Normalize folders). When tokens are reduced,
module 0 becomes `TokcompTransformer`: the compressed model from `tokcomp.load`, whose
output tokens come with the number of input tokens each stands for. It hands those
sizes to the Pooling module as the attention mask (0 for padding rows), so mean pooling
of the merged tokens equals mean pooling over the input tokens they stand for, and CLS
pooling reads the CLS token (always kept, always first). Normalize and the other modules
are sentence-transformers' own. sentence-transformers imports a module class from
outside its own package only with `trust_remote_code=True`; the class comes from the
installed tokcomp, nothing from the folder runs.

Vocabulary-trimmed checkpoints keep sentence-transformers' own Transformer module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tokcomp.errors import RecipeError
from tokcomp.fileio import read_json, write_json

MODULE_TYPE = "tokcomp.integrations.sentence_transformers.TokcompTransformer"
ROOT_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")
# Pooling modes whose result over size-weighted merged tokens is the pooling over the input tokens
# (mean, mean_sqrt_len) or reads a kept token (cls); max takes the max over merged (averaged) tokens.
SIZE_AWARE_POOLING = ("cls", "mean", "max", "mean_sqrt_len_tokens")


def is_sentence_transformers_folder(folder: Path) -> bool:
    return (folder / "modules.json").is_file()


def copy_module_files(source: Path, folder: Path, token_reduced: bool) -> None:
    """Copy the sentence-transformers files of `source` into the checkpoint `folder`.

    Module 0 (the Transformer) is the checkpoint itself; with token reduction its type
    becomes TokcompTransformer. Module folders (Pooling, Normalize, Dense, ...) are copied.
    """
    modules = read_json(source / "modules.json")
    if token_reduced:
        check_pooling(source)
        first = modules[0]
        if first.get("path", "") != "" or not first["type"].endswith("Transformer"):
            raise RecipeError(
                f"{source}: sentence-transformers module 0 is {first['type']} at '{first.get('path')}'; tokcomp "
                "compresses models whose first module is the Transformer in the folder root",
                hint="compile the underlying transformers model folder instead",
            )
        modules = [{**first, "type": MODULE_TYPE}, *modules[1:]]
    for module in modules[1:]:
        sub = module.get("path", "")
        if not sub:
            continue
        target = folder / sub
        if (source / sub).is_dir():
            shutil.copytree(source / sub, target)
        else:  # e.g. Normalize: no files of its own, but sentence-transformers expects the folder
            target.mkdir(parents=True)
    for name in ROOT_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    write_json(folder / "modules.json", modules)


def check_pooling(source: Path) -> None:
    """Refuse pooling that token reduction would silently change (last token, position-weighted mean)."""
    for module in read_json(source / "modules.json"):
        if not module["type"].endswith(".Pooling"):
            continue
        config = read_json(source / module["path"] / "config.json")
        modes = _pooling_modes(config)
        unsupported = [m for m in modes if m not in SIZE_AWARE_POOLING]
        if unsupported:
            raise RecipeError(
                f"{source}: sentence-transformers pooling {unsupported} depends on token positions, which token "
                "reduction changes",
                hint=f"token reduction supports pooling {', '.join(SIZE_AWARE_POOLING)}; use vocab_trim alone for this model",
            )


def _pooling_modes(config: dict[str, Any]) -> list[str]:
    if "pooling_mode" in config:  # sentence-transformers >= 5 writes the mode(s) by name
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    prefix = "pooling_mode_"
    names = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max", "lasttoken": "lasttoken"}
    return [names.get(k[len(prefix) :], k[len(prefix) :]) for k, on in config.items() if k.startswith(prefix) and on]


def write_sentence_transformers_files(folder: Path, pooling: str, normalize: bool, max_seq_length: int) -> None:
    """The module files of a Transformer -> Pooling (-> Normalize) sentence-transformers model."""
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(str(folder)).hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": pooling == short for m, short in (("cls_token", "cls"), ("mean_tokens", "mean"))}
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, **modes})
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def sentence_pooling(folder: Path) -> tuple[str, bool] | None:
    """(pooling, normalize) of the sentence-transformers model in `folder`, or None if it has no modules.json."""
    if not is_sentence_transformers_folder(folder):
        return None
    modules = read_json(folder / "modules.json")
    pooling = next((m for m in modules if m["type"].endswith(".Pooling")), None)
    modes = _pooling_modes(read_json(folder / pooling["path"] / "config.json")) if pooling else ["cls"]
    if len(modes) != 1 or modes[0] not in ("cls", "mean"):
        raise RecipeError(f"{folder}: pooling {modes} is not supported here", hint="tokcomp pools with cls or mean")
    return modes[0], any(m["type"].endswith(".Normalize") for m in modules)
