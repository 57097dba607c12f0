"""The compressed checkpoint: a folder that reloads without the recipe.

    model.safetensors   weights (safetensors only; nothing is ever unpickled)
    config.json         the base model's config; with token reduction nested in a "tokcomp" config that
                        makes transformers' Auto classes load the compressed model (tokcomp_auto.py)
    modules.json, ...   sentence-transformers' module files, when the base model has them
    README.md           the model card
    tokcomp.json        base model class + the ordered pass records (name, version, config, metadata)
    recipe.yaml         provenance only; never read back
    report.json         FLOPs, params, tokens per layer, fidelity
    + the base model's preprocessing files (image processor / tokenizer)

`load(path)` builds the base architecture from config.json, replays every pass's
`restore` from tokcomp.json, then loads the weights strictly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import safetensors
import safetensors.torch
from pydantic import BaseModel, ValidationError
from torch import nn

from tokcomp.errors import CheckpointError
from tokcomp.fileio import CHECKPOINT_MARKER, read_json, write_json
from tokcomp.integrations.hf_auto import base_config, write_auto_files
from tokcomp.integrations.st_files import copy_module_files, is_sentence_transformers_folder
from tokcomp.model_card import write_card
from tokcomp.passes import PassRecord, get_pass

STATE_FILE = CHECKPOINT_MARKER
WEIGHTS_FILE = "model.safetensors"
# 2: token budgets apply as rates of each input's own tokens (the records did not change: a
# format-1 checkpoint loads into the same model at its reference input, and now into the
# right one at every other input too). Readers of format 1 would apply counts, so they refuse 2.
FORMAT_VERSION = 2


class BaseModelInfo(BaseModel):
    source: str
    library: Literal["transformers", "timm"]
    class_name: str
    pooling: Literal["cls", "mean", "none"] = "cls"  # none: models whose output is not pooled (speech)
    timm_name: str | None = None
    hub_id: str | None = None  # the Hugging Face id of the base model, when known (model card)


class InputInfo(BaseModel):
    modality: Literal["image", "text", "audio"]
    image_size: int | None = None
    sequence_length: int | None = None


class PassRecordModel(BaseModel):
    name: str
    version: int
    config: dict[str, Any]
    metadata: dict[str, Any]


class CheckpointState(BaseModel):
    format: Literal["tokcomp-checkpoint"] = "tokcomp-checkpoint"
    format_version: int = FORMAT_VERSION
    tokcomp_version: str
    base: BaseModelInfo
    input: InputInfo
    passes: list[PassRecordModel]
    tokens_per_layer: list[int] | None = None
    exports: list[dict[str, Any]] = []  # one entry per exported artifact (format, file, validation)
    integrity: dict[str, str] | None = None  # digests checked on every read (see state_digest)


@dataclass
class Checkpoint:
    model: nn.Module
    state: CheckpointState
    path: Path


def save_checkpoint(
    folder: Path, loaded, records: list[PassRecord], recipe_text: str | None, report: dict, file_writers=()
) -> None:
    """Write every checkpoint file into `folder` (an atomic temporary folder from the caller).

    `file_writers` are callables(folder) from passes that add files of their own.
    """
    from tokcomp import __version__

    model = loaded.model
    token_tokens = next((r.metadata["tokens_per_layer"] for r in records if "tokens_per_layer" in r.metadata), None)
    token_reduced = token_tokens is not None
    safetensors.torch.save_model(model, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if loaded.library == "transformers" and token_reduced:
        # Never the uncompressed model through AutoModel / pipeline in silence (integrations/hf_auto.py).
        write_auto_files(folder, json.loads(model.config.to_json_string()), loaded.class_name)
    elif loaded.library == "transformers":
        model.config.to_json_file(str(folder / "config.json"))
    else:
        write_json(folder / "config.json", {"timm_name": loaded.extra["timm_name"], "num_classes": model.num_classes})
    if loaded.processor is not None:
        loaded.processor.save_pretrained(str(folder))
    if loaded.folder is not None and is_sentence_transformers_folder(loaded.folder):
        copy_module_files(loaded.folder, folder, token_reduced)
    if loaded.library == "transformers" and model.can_generate():  # Whisper: language, task, suppress lists
        model.generation_config.save_pretrained(str(folder))
    spec = loaded.input_spec
    state = CheckpointState(
        tokcomp_version=__version__,
        base=BaseModelInfo(
            source=loaded.source,
            library=loaded.library,
            class_name=loaded.class_name,
            pooling=loaded.pooling,
            timm_name=loaded.extra.get("timm_name"),
            hub_id=loaded.hub_id,
        ),
        input=InputInfo(modality=spec.modality, image_size=spec.image_size, sequence_length=spec.sequence_length),
        passes=[PassRecordModel(**r.to_json()) for r in records],
        tokens_per_layer=token_tokens,
    )
    write_json(folder / STATE_FILE, with_integrity(folder, state.model_dump(mode="json")))
    if recipe_text is not None:
        (folder / "recipe.yaml").write_text(recipe_text)
    write_json(folder / "report.json", report)
    for write in file_writers:
        write(folder)
    write_card(folder)


def record_export(path: str | Path, entry: dict[str, Any]) -> None:
    """Add (or replace, by file name) an export entry in a checkpoint's tokcomp.json, atomically.

    Only "exports" changes: the rest is written back as read, so its digest stays valid.
    """
    path = Path(path)
    state = read_state(path)
    exports = [e for e in state.exports if e.get("file") != entry.get("file")] + [entry]
    write_json(path / STATE_FILE, {**read_json(path / STATE_FILE), "exports": exports})
    write_card(path)


def read_state(path: str | Path) -> CheckpointState:
    path = Path(path)
    state_file = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    if not state_file.is_file():
        raise CheckpointError(
            f"{path} is not a tokcomp checkpoint: {STATE_FILE} is missing",
            hint="point at the output folder of `tokcomp compile`",
        )
    try:
        raw = read_json(state_file)
        state = CheckpointState.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise CheckpointError(f"{state_file} is corrupted: {str(exc).splitlines()[0]}") from None
    if state.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {state.format_version}; this tokcomp reads up to {FORMAT_VERSION}",
            hint="upgrade tokcomp",
        )
    check_integrity(path, raw)
    return state


# ------------------------------------------------------------------ integrity
# tokcomp.json carries two digests: of what the model is rebuilt from (base model, input,
# pass records; not the exports, which `record_export` rewrites), and of the weights'
# safetensors header (tensor names, dtypes, shapes, offsets). An edited tokcomp.json or
# weights from another compile then fail loudly instead of loading something else.
# Checkpoints written before the digests existed carry none and are read as before.

DIGEST_KEYS = ("base", "input", "passes", "tokens_per_layer")


def state_digest(raw: dict[str, Any]) -> str:
    covered = {key: raw.get(key) for key in DIGEST_KEYS}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def weights_header_digest(weights: Path) -> str:
    with open(weights, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = fh.read(size) if size <= weights.stat().st_size - 8 else b""
    if len(header) != size or not size:
        raise CheckpointError(
            f"{weights} is corrupted or truncated: no complete safetensors header", hint="re-run tokcomp compile"
        )
    return hashlib.sha256(header).hexdigest()


def with_integrity(folder: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The tokcomp.json content with its digests (the weights are already written)."""
    weights = weights_header_digest(folder / WEIGHTS_FILE)
    return {**raw, "integrity": {"algorithm": "sha256", "state": state_digest(raw), "weights_header": weights}}


def check_integrity(path: Path, raw: dict[str, Any]) -> None:
    recorded = raw.get("integrity")
    if not recorded:
        return
    if recorded.get("state") != state_digest(raw):
        raise CheckpointError(
            f"{path / STATE_FILE} was edited after compile: its base model, input or pass records no longer "
            "match their digest, so the model it describes is not the one that was compiled",
            hint="re-run tokcomp compile with the settings you want instead of editing tokcomp.json",
        )
    weights = path / WEIGHTS_FILE
    if weights.is_file() and recorded.get("weights_header") != weights_header_digest(weights):
        raise CheckpointError(
            f"{weights} does not match {STATE_FILE}: its tensor names or shapes differ from the compiled ones",
            hint="the folder mixes files from different compiles; re-run tokcomp compile",
        )


def open_checkpoint(path: str | Path, apply_passes: bool = True) -> Checkpoint:
    """The checkpoint's model and state. With apply_passes=False, the base model alone with the
    saved weights: the original, for passes that change the forward pass but not the weights."""
    path = Path(path)
    state = read_state(path)
    model = _build_base(path, state.base)
    if apply_passes:
        for record in state.passes:
            _restore_pass(model, record)
    _load_weights(model, path / WEIGHTS_FILE)
    return Checkpoint(model=model.eval(), state=state, path=path)


def load(path: str | Path) -> nn.Module:
    """Rebuild a compressed model from its folder alone: config.json + tokcomp.json + weights."""
    return open_checkpoint(path).model


def _build_base(path: Path, base: BaseModelInfo) -> nn.Module:
    if base.library == "timm":
        try:
            import timm
        except ImportError:
            raise CheckpointError("this checkpoint holds a timm model", hint="pip install 'tokcomp[timm]'") from None
        config = read_json(path / "config.json")
        return timm.create_model(base.timm_name, pretrained=False, num_classes=config["num_classes"])
    import transformers

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}/config.json is missing", hint="re-run tokcomp compile")
    model_cls = getattr(transformers, base.class_name, None)
    if not (isinstance(model_cls, type) and issubclass(model_cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"{path}: unknown model class '{base.class_name}' for this transformers version")
    model = model_cls(base_config(read_json(path / "config.json")))
    if (path / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(str(path))
    return model


def _restore_pass(model: nn.Module, record: PassRecordModel) -> None:
    handler = get_pass(record.name)
    if record.version > handler.version:
        raise CheckpointError(
            f"pass '{record.name}' was saved at version {record.version}; this tokcomp has version {handler.version}",
            hint="upgrade tokcomp",
        )
    handler.restore(model, handler.Config.model_validate(record.config), record.metadata)


def _load_weights(model: nn.Module, weights: Path) -> None:
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing", hint="re-run tokcomp compile")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights} is corrupted or truncated: {str(exc).splitlines()[0]}", hint="re-run tokcomp compile"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit the rebuilt model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
            hint="the checkpoint and tokcomp.json come from different models; re-run tokcomp compile",
        )
