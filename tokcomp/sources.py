"""Model sources: zoo:<name>, timm:<name>, a Hugging Face hub id or a local folder.

Loading never trusts remote code unless the recipe says `trust_remote_code: true`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import nn

from tokcomp.errors import TokcompError, first_line
from tokcomp.recipe import ModelSpec
from tokcomp.surgery.adapters.base import InputSpec

SOURCE_HINT = "use zoo:<name> (see `tokcomp zoo list`), timm:<name> (with tokcomp[timm]), a local model folder, or a Hugging Face hub id"


@dataclass
class LoadedModel:
    model: nn.Module
    source: str
    library: Literal["transformers", "timm"]
    class_name: str
    input_spec: InputSpec
    processor: Any | None = None  # image processor or tokenizer
    pooling: Literal["cls", "mean", "none"] = "cls"  # how to turn outputs into one embedding (none: speech)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. timm model name
    folder: Path | None = None  # the local model folder (zoo or on disk): files a checkpoint keeps (sentence-transformers)
    hub_id: str | None = None  # the model's Hugging Face id, when known


def load_model(spec: ModelSpec | str) -> LoadedModel:
    if isinstance(spec, str):
        spec = ModelSpec(source=spec)
    source = spec.source
    if source.startswith("timm:"):
        loaded = _load_timm(source[len("timm:") :])
    elif source.startswith("zoo:"):
        from tokcomp import zoo

        folder = zoo.pull(source)
        loaded = _load_transformers(str(folder), spec, source)
        meta = json.loads((folder / "zoo.json").read_text())
        loaded.pooling = meta.get("pooling", "cls")
        loaded.folder = folder
        loaded.hub_id = zoo.registry.MODELS[source.removeprefix("zoo:")].hub_id
    else:
        _check_local_source(source)
        loaded = _load_transformers(source, spec, source)
        if Path(source).expanduser().is_dir():
            loaded.folder = Path(source).expanduser()
        else:
            loaded.hub_id = source
    loaded.model.eval()
    loaded.input_spec = _input_spec(loaded, spec)
    if spec.image_size is not None and loaded.processor is not None and loaded.input_spec.modality == "image":
        fit_processor(loaded.processor, spec.image_size)
    return loaded


def _load_transformers(location: str, spec: ModelSpec, source: str) -> LoadedModel:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(location, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TokcompError(f"cannot load model '{source}': {first_line(exc)}", hint=SOURCE_HINT) from None
    model_cls = model_class_for(config)
    model = model_cls.from_pretrained(location, dtype=torch.float32, trust_remote_code=spec.trust_remote_code)
    modality = modality_of_config(config)
    processor = _processor(location, modality, spec.trust_remote_code)
    pooling = default_pooling(model, modality)
    return LoadedModel(model, source, "transformers", model_cls.__name__, InputSpec(modality), processor, pooling)


def default_pooling(model: nn.Module, modality: str) -> Literal["cls", "mean"]:
    """How a transformers model's output becomes one embedding: mean over tokens for text models without a pooler."""
    return "mean" if modality == "text" and not _has_pooler(model) else "cls"


def modality_of_config(config) -> Literal["image", "text", "audio"]:
    """Of a transformers config (or config.json's keys): audio models have mel bins (Whisper), text models
    a vocabulary and no image size."""
    if getattr(config, "num_mel_bins", None):
        return "audio"
    return "text" if getattr(config, "vocab_size", None) and not hasattr(config, "image_size") else "image"


def known_modality(source: str) -> str | None:
    """The modality of a zoo model or a local model folder, read without loading the model; None when unknown."""
    if source.startswith("zoo:"):
        from tokcomp.zoo.registry import MODELS

        model = MODELS.get(source.removeprefix("zoo:"))
        return model.modality if model else None
    config = Path(source).expanduser() / "config.json"
    try:
        return modality_of_config(SimpleNamespace(**json.loads(config.read_text()))) if config.is_file() else None
    except (OSError, ValueError, TypeError):
        return None


def _check_local_source(source: str) -> None:
    """Clear errors for a local model folder that is missing, not a model folder, or a tokcomp checkpoint."""
    from tokcomp.fileio import CHECKPOINT_MARKER

    path = Path(source).expanduser()
    if (path / CHECKPOINT_MARKER).is_file():
        raise TokcompError(
            f"model '{source}' is a tokcomp checkpoint ({_checkpoint_summary(path / CHECKPOINT_MARKER)}); "
            "compiling from it would silently drop its passes, so tokcomp does not",
            hint="compile the original model with all the passes in one recipe, or load the checkpoint with "
            "tokcomp.load() and add passes with tokcomp.apply()",
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise TokcompError(f"model folder {source} has no config.json", hint="point at a Hugging Face model folder")
    if path.is_file():
        raise TokcompError(f"model '{source}' is a file", hint="point at the folder that holds config.json")
    if not path.exists() and _looks_like_path(source):
        raise TokcompError(f"cannot load model '{source}': no such folder", hint=SOURCE_HINT)


def _checkpoint_summary(state_file: Path) -> str:
    try:
        state = json.loads(state_file.read_text())
        passes = ", ".join(p["name"] for p in state["passes"])
        return f"{state['base']['source']} + {passes}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its tokcomp.json is unreadable"


def _looks_like_path(source: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else with a slash, or starting with . or ~, is a path."""
    return source.startswith((".", "~", "/")) or source.count("/") > 1 or source.endswith("/")


def model_class_for(config) -> type:
    """The transformers class named in config.architectures, else the AutoModel mapping."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    # No architectures recorded: prefer a class with its head (LM / seq2seq), then the bare model.
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForSeq2SeqLM, transformers.AutoModel):
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    raise TokcompError(f"no transformers model class for config type {type(config).__name__}", hint=SOURCE_HINT)


def _processor(location: str, modality: str, trust_remote_code: bool):
    import transformers

    auto = {"text": transformers.AutoTokenizer, "audio": transformers.AutoProcessor}.get(
        modality, transformers.AutoImageProcessor
    )
    try:
        return auto.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def _has_pooler(model: nn.Module) -> bool:
    return getattr(model, "pooler", None) is not None


def _load_timm(name: str) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise TokcompError(
            f"timm:{name} needs timm", hint="pip install 'tokcomp[timm]' (timm requires a working torchvision)"
        ) from None
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # timm raises RuntimeError / HF hub errors for unknown or offline names
        raise TokcompError(f"cannot create timm model '{name}': {first_line(exc)}", hint=SOURCE_HINT) from None
    return LoadedModel(model, f"timm:{name}", "timm", type(model).__name__, InputSpec("image"), extra={"timm_name": name})


def _input_spec(loaded: LoadedModel, spec: ModelSpec) -> InputSpec:
    from tokcomp.errors import UnsupportedModelError
    from tokcomp.surgery import find_adapter

    try:
        default = find_adapter(loaded.model).default_input(loaded.model)
    except UnsupportedModelError:  # fine for passes that do not reduce tokens (vocabulary trimming)
        default = InputSpec(loaded.input_spec.modality, image_size=None, sequence_length=128)
    if default.modality == "audio":  # the encoder window; the adapter refuses any other length
        return InputSpec("audio", sequence_length=spec.sequence_length or default.sequence_length)
    if default.modality == "text":
        return InputSpec("text", sequence_length=spec.sequence_length or default.sequence_length)
    size = spec.image_size or _processor_image_size(loaded.processor) or default.image_size
    return InputSpec("image", image_size=size)


def fit_processor(processor, image_size: int) -> None:
    """Make an image processor produce image_size x image_size inputs (it is saved in the checkpoint).

    Resize-then-crop processors keep their resize / crop ratio (DINOv2: shortest edge 256 for a
    224 crop -> 592 for 518); resize-only processors resize to the square.
    """
    from PIL import Image

    size = _as_dict(getattr(processor, "size", None))
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
        crop = _as_dict(processor.crop_size)
        ratio = image_size / (crop.get("height") or image_size)
        processor.crop_size = {"height": image_size, "width": image_size}
        if size.get("shortest_edge"):
            processor.size = {"shortest_edge": round(size["shortest_edge"] * ratio)}
        elif size.get("height"):
            processor.size = {"height": round(size["height"] * ratio), "width": round(size["width"] * ratio)}
    elif size.get("height") or size.get("shortest_edge"):
        processor.size = {"height": image_size, "width": image_size}
    produced = processor(images=[Image.new("RGB", (image_size + 37, image_size + 11))], return_tensors="pt")
    shape = tuple(produced["pixel_values"].shape[-2:])
    if shape != (image_size, image_size):
        raise TokcompError(
            f"cannot make the model's image processor ({type(processor).__name__}) produce {image_size} px inputs "
            f"(it produces {shape[0]}x{shape[1]})",
            hint="drop model.image_size from the recipe, or give a model folder whose preprocessor_config.json has that size",
        )


def _as_dict(size) -> dict:
    if size is None:
        return {}
    if isinstance(size, dict):
        return size
    return {k: v for k, v in vars(size).items() if v is not None}


def _processor_image_size(processor) -> int | None:
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = crop or getattr(processor, "size", None)
    if isinstance(size, dict):
        return size.get("height") or size.get("shortest_edge")
    return getattr(size, "height", None) if size is not None else None

