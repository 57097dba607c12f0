"""Token-reduced checkpoints through transformers' Auto classes, never the uncompressed model.

A token-reduced checkpoint's weights are exactly the original's (passes rewrite the
forward pass, not the weights), so a plain `config.json` would let `AutoModel` or
`pipeline(model=folder)` load the *uncompressed* model without a word. The checkpoint's
config.json therefore says `"model_type": "tokcomp"`, nests the base model's config,
and maps the Auto classes that fit the base class to a one-line file in the folder,
`tokcomp_auto.py`, that imports the installed tokcomp. transformers' standard
custom-code mechanism then gives:

    AutoModel.from_pretrained(out, trust_remote_code=True)   # the compressed model (tokcomp installed)
    AutoModel.from_pretrained(out)                            # refused: the folder holds custom code
    tokcomp.load(out)                                         # the compressed model, no flag needed

Nothing from the folder runs but that import; without tokcomp installed, transformers
refuses and names the missing package. Vocabulary-trimmed checkpoints do not change the
forward pass and stay plain Hugging Face folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers

from tokcomp.errors import CheckpointError

MODEL_TYPE = "tokcomp"
SHIM_FILE = "tokcomp_auto.py"
SHIM_MODULE = SHIM_FILE.removesuffix(".py")
SHIM_TEXT = '''"""Written by tokcomp: lets transformers' Auto classes load this token-reduced checkpoint.

Load it with `tokcomp.load(folder)`, or `AutoModel.from_pretrained(folder, trust_remote_code=True)`
with tokcomp installed (`pip install tokcomp`). This file runs no code of its own.
"""

from tokcomp.integrations.hf_auto import TokcompConfig, TokcompModel  # noqa: F401
'''
# The Auto classes a checkpoint may be mapped to, when the base class is theirs.
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForMaskedLM",
    "AutoModelForImageClassification",
    "AutoModelForCausalLM",
    "AutoModelForSpeechSeq2Seq",
)
LOAD_HINT = "load it with tokcomp.load(folder), or AutoModel.from_pretrained(folder, trust_remote_code=True)"


def wrapped_config(base_config: dict[str, Any], class_name: str) -> dict[str, Any]:
    """config.json of a token-reduced checkpoint: the base config nested, the fitting Auto classes mapped."""
    from tokcomp import __version__

    mapped = auto_classes_for(base_config, class_name)
    return {
        "model_type": MODEL_TYPE,
        "architectures": [class_name],
        "auto_map": {"AutoConfig": f"{SHIM_MODULE}.TokcompConfig"}
        | {auto: f"{SHIM_MODULE}.TokcompModel" for auto in mapped},
        "base_config": base_config,
        "tokcomp_version": __version__,
    }


def write_auto_files(folder: Path, base_config: dict[str, Any], class_name: str) -> None:
    from tokcomp.fileio import write_json

    write_json(folder / "config.json", wrapped_config(base_config, class_name))
    (folder / SHIM_FILE).write_text(SHIM_TEXT)


def base_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The base model's config from a checkpoint's config.json (wrapped or, before wrapping existed, plain)."""
    if config.get("model_type") != MODEL_TYPE:
        return config
    base = config.get("base_config")
    if not isinstance(base, dict) or "model_type" not in base:
        raise CheckpointError("config.json says model_type tokcomp but holds no base_config", hint="re-run tokcomp compile")
    return base


def base_config(config: dict[str, Any]):
    """The transformers config object of the base model."""
    base = base_config_dict(config)
    return _config_class(base["model_type"]).from_dict(base)


def _config_class(model_type: str) -> type:
    try:
        return transformers.CONFIG_MAPPING[model_type]
    except KeyError:
        raise CheckpointError(
            f"this transformers version does not know model type {model_type!r}",
            hint="install the transformers version the checkpoint was compiled with",
        ) from None


def auto_classes_for(base: dict[str, Any], class_name: str) -> list[str]:
    """The Auto classes whose mapping gives `class_name` for this config type."""
    config_class = _config_class(base["model_type"])
    mapped = []
    for auto_name in AUTO_CLASSES:
        mapping = getattr(transformers, auto_name)._model_mapping
        try:
            model_class = mapping[config_class]
        except KeyError:
            continue
        classes = model_class if isinstance(model_class, tuple | list) else (model_class,)
        if any(c.__name__ == class_name for c in classes):
            mapped.append(auto_name)
    return mapped or ["AutoModel"]


class TokcompConfig(transformers.PreTrainedConfig):
    """config.json of a token-reduced checkpoint: the base config nested under `base_config`."""

    model_type = MODEL_TYPE

    def __init__(self, base_config: dict[str, Any] | None = None, tokcomp_version: str | None = None, **kwargs):
        self.base_config = base_config or {}
        self.tokcomp_version = tokcomp_version
        super().__init__(**kwargs)


class TokcompModel:
    """What the Auto classes call: `from_pretrained(folder)` returns `tokcomp.load(folder)`.

    Not a model class of its own: the object returned is the checkpoint's base class
    (e.g. BertModel) with its token reduction, exactly what tokcomp.load gives.
    `auto_class` is the Auto class it was registered for (None: reached through auto_map,
    which lists only the Auto classes that fit).
    """

    config_class = TokcompConfig
    auto_class: str | None = None
    _HUB_KEYS = frozenset(
        {"cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "_from_auto",
         "token", "trust_remote_code", "adapter_kwargs", "code_revision", "config", "_commit_hash"}
    )  # fmt: skip

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModel") -> None:
        """transformers calls this on remote classes; the mapping lives in config.json already."""

    @classmethod
    def from_pretrained(cls, folder: str | Path, *model_args: Any, **kwargs: Any):
        from tokcomp.checkpoint import load

        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        unsupported = sorted(key for key in kwargs if key not in cls._HUB_KEYS)
        if model_args or unsupported:
            raise CheckpointError(
                f"a tokcomp checkpoint loads as compiled; unsupported arguments {unsupported or list(model_args)}",
                hint="load it without them, then call .to(...) on the model",
            )
        if kwargs.get("subfolder"):
            folder = Path(folder) / kwargs["subfolder"]
        if not Path(folder).is_dir():
            raise CheckpointError(f"{folder} is not a local folder", hint=LOAD_HINT)
        config = kwargs.get("config")
        fits = getattr(config, "auto_map", None) or {}
        if cls.auto_class is not None and config is not None and cls.auto_class not in fits:
            base = (getattr(config, "architectures", None) or ["its base class"])[0]
            raise CheckpointError(
                f"{folder} holds a compressed {base}, which {cls.auto_class} does not load",
                hint=f"use {' or '.join(a for a in fits if a != 'AutoConfig')}, or tokcomp.load(folder)",
            )
        model = load(folder)
        if dtype not in (None, "auto"):
            model = model.to(dtype)
        return model


def _register() -> None:
    """Map model type "tokcomp" to these classes in transformers' Auto classes for this process.

    Done when this module is imported (tokcomp.load, the sentence-transformers module):
    the Auto classes then load tokcomp checkpoints without `trust_remote_code`, and nothing
    asks whether to run the folder's tokcomp_auto.py.
    """
    transformers.AutoConfig.register(MODEL_TYPE, TokcompConfig, exist_ok=True)
    for auto_name in AUTO_CLASSES:
        loader = type(f"Tokcomp{auto_name}", (TokcompModel,), {"auto_class": auto_name})
        getattr(transformers, auto_name).register(TokcompConfig, loader, exist_ok=True)


_register()
