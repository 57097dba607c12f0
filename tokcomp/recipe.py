"""The recipe: a strict, typed YAML description of one compile.

    model: zoo:dinov2-small            # or {source: ..., image_size: 224}
    passes:
      - {type: tome, r: 16}            # each pass validates its own typed config
    calibration: {data: zoo:images, samples: 256}
    evaluation: {data: zoo:images, samples: 64}
    export: []
    seed: 0

Errors name the file, line, key path, the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from tokcomp.errors import RecipeError
from tokcomp.fileio import read_text
from tokcomp.passes import PASSES, PassConfig, get_pass
from tokcomp.passes.base import StrictModel


class ModelSpec(StrictModel):
    source: str = Field(description="zoo:<name>, timm:<name>, a Hugging Face hub id or a local folder")
    image_size: int | None = Field(default=None, gt=0, description="input resolution for vision models")
    sequence_length: int | None = Field(default=None, gt=0, description="reference length for text models")
    trust_remote_code: bool = False


class DataSpec(StrictModel):
    data: str | None = Field(
        default=None,
        description="zoo:images | zoo:imagenet | zoo:skimage | zoo:text | a folder of images | a .txt/.jsonl file",
    )
    samples: int = Field(default=64, gt=0)
    batch_size: int = Field(default=16, gt=0)


class CalibrationSpec(DataSpec):
    """Data for passes that learn (DiffRate's rate search); see tokcomp/data/sources.py for `data`."""

    samples: int = Field(default=256, gt=0)
    augment: bool = Field(
        default=False, description="images only: draw `samples` random resized crops / flips from the data"
    )
    forward_loop: str | None = Field(
        default=None,
        description='opt-in user code instead of `data`: "path/to/file.py:function"; called once with the '
        "model, it runs the calibration inputs through it",
    )

    @field_validator("forward_loop")
    @classmethod
    def _forward_loop_form(cls, value, info):
        # Fields validate in order, so `data` and `augment` are already in info.data.
        if value is None:
            return value
        if info.data.get("data") is not None:
            raise ValueError("give either 'data' or 'forward_loop', not both")
        if info.data.get("augment"):
            raise ValueError("'augment' applies to 'data', not to a 'forward_loop'")
        path, sep, function = value.rpartition(":")
        if not sep or not path.endswith(".py") or not function.isidentifier():
            raise ValueError(f"forward_loop must look like 'path/to/file.py:function', got {value!r}")
        return value


class FidelityThresholds(StrictModel):
    """Fidelity below these is flagged: a warning, and `below_threshold` in report.json / eval.json.

    Defaults: a usable token reduction keeps more (ToMe at -50% FLOPs on DINOv2-S: cosine
    0.966); null turns a check off.
    """

    cosine_mean: float | None = Field(default=0.9, ge=-1, le=1)
    cosine_min: float | None = Field(default=None, ge=-1, le=1)
    top1_agreement: float | None = Field(default=0.8, ge=0, le=1)


class EvaluationSpec(DataSpec):
    random_baseline: bool = Field(default=True, description="also score random token dropping at the same counts")
    warn_below: FidelityThresholds = FidelityThresholds()


class RecipeDocument(StrictModel):
    model: ModelSpec
    passes: list[dict[str, Any]] = Field(min_length=1)
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvaluationSpec | None = Field(
        default=EvaluationSpec(), description="fidelity measured at compile time; false skips it"
    )
    export: list[str] = Field(default_factory=list)
    seed: int = 0

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, value):
        return {"source": value} if isinstance(value, str) else value

    @field_validator("evaluation", mode="before")
    @classmethod
    def _evaluation_switch(cls, value):
        if value is False:
            return None
        return {} if value is True else value


@dataclass(frozen=True)
class PassSpec:
    type: str
    config: PassConfig


@dataclass(frozen=True)
class Recipe:
    document: RecipeDocument
    passes: list[PassSpec]
    text: str  # the YAML as written, kept for provenance
    path: Path | None = None

    @property
    def model(self) -> ModelSpec:
        return self.document.model

    @property
    def seed(self) -> int:
        return self.document.seed

    def local_inputs(self) -> list[Path]:
        """The files and folders on this machine the compile reads (that its output must not replace)."""
        document = self.document
        calibration_loop = (document.calibration.forward_loop or "").rpartition(":")[0]
        named = [
            document.model.source,
            document.calibration.data,
            document.evaluation.data if document.evaluation else None,
            calibration_loop,
        ]
        paths = [self.path] if self.path else []
        return paths + [Path(p) for p in named if p and not p.startswith("zoo:") and Path(p).exists()]


def without_evaluation(recipe: Recipe) -> Recipe:
    """The recipe with `evaluation: false` (tokcomp compile --no-eval)."""
    return dataclasses.replace(recipe, document=recipe.document.model_copy(update={"evaluation": None}))


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder", hint="give the recipe's .yaml file")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} not found", hint="check the path; recipes/ has examples")
    return parse_recipe(read_text(path), source=str(path), path=path)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    return parse_recipe(yaml.safe_dump(data, sort_keys=False), source="<dict>")


def parse_recipe(text: str, source: str = "<recipe>", path: Path | None = None) -> Recipe:
    try:
        data = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RecipeError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys {', '.join(RecipeDocument.model_fields)}")
    try:
        document = RecipeDocument.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(exc, RecipeDocument, data, (), source, lines) from None
    _check_pass_modalities(document, source, lines)
    specs = [_pass_spec(raw, i, source, lines) for i, raw in enumerate(document.passes)]
    return Recipe(document=document, passes=specs, text=text, path=path)


def parse_pass_list(passes: list[dict[str, Any]]) -> list[PassSpec]:
    """Validate pass dicts given in Python (tokcomp.apply) with the recipe's rules."""
    if not isinstance(passes, list) or not all(isinstance(p, dict) for p in passes):
        raise RecipeError('passes must be a list of dicts such as [{"type": "tome", "r": 8}]')
    return [_pass_spec(raw, i, "<passes>", {}) for i, raw in enumerate(passes)]


def _pass_spec(raw: dict[str, Any], index: int, source: str, lines: dict) -> PassSpec:
    where = ("passes", index)
    valid = ", ".join(sorted(PASSES))
    if "type" not in raw:
        raise RecipeError(f"{_where(source, lines, where)}: {_path(where)}: missing 'type' (valid types: {valid})")
    kind = raw["type"]
    if kind not in PASSES:
        raise RecipeError(
            f"{_where(source, lines, (*where, 'type'))}: {_path((*where, 'type'))}: unknown pass {kind!r} "
            f"(valid types: {valid})"
        )
    config_cls = get_pass(kind).Config
    params = {k: v for k, v in raw.items() if k != "type"}
    try:
        return PassSpec(kind, config_cls.model_validate(params))
    except ValidationError as exc:
        raise _schema_error(exc, config_cls, params, where, source, lines) from None


def _check_pass_modalities(document: RecipeDocument, source: str, lines: dict) -> None:
    """A pass made for one modality (vocab_trim: text) on a model known, without loading it, to be another."""
    from tokcomp.sources import known_modality

    modality = known_modality(document.model.source)
    for index, raw in enumerate(document.passes):
        allowed = getattr(PASSES.get(str(raw.get("type"))), "modalities", None)
        if modality and allowed and modality not in allowed:
            where = ("passes", index, "type")
            raise RecipeError(
                f"{_where(source, lines, where)}: {_path(where)}: {raw['type']} applies to {' / '.join(allowed)} "
                f"models; {document.model.source} is a model for {modality}",
                hint=f"remove this pass, or use a {allowed[0]} model (see `tokcomp zoo list`)",
            )


# ---------------------------------------------------------------- error reporting


def _line_map(node, path=(), out=None) -> dict[tuple, int]:
    """YAML node tree -> {key path: 1-based line}."""
    out = {} if out is None else out
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _line_map(value, (*path, key.value), out)
            out[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)
    return out


def _path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _where(source: str, lines: dict, loc: tuple) -> str:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return f"{source}:{lines[loc[:cut]]}"
    return source


def _data_prefix(data: Any, loc: tuple) -> tuple:
    """The longest prefix of `loc` that addresses real data (the rest are pydantic's union tags)."""
    prefix, node = (), data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
        prefix += (part,)
    return prefix


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at `loc` (for listing valid keys)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return None
        cls = models[0]
    return cls


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        data = data[part]
    return data


def _schema_error(exc: ValidationError, cls, data, base: tuple, source: str, lines: dict) -> RecipeError:
    # An unknown key first: `pases:` is a typo of `passes`, not a recipe without passes.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = _data_prefix(data, tuple(first["loc"]))
    full = (*base, *loc)
    where = _where(source, lines, full)
    if first["type"] == "extra_forbidden":
        key = first["loc"][-1]
        owner = _model_at(cls, tuple(first["loc"])[:-1])
        names = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        valid = ", ".join(names) or "see the README"
        close = difflib.get_close_matches(str(key), names, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return RecipeError(f"{where}: {_path(full)}: unknown key {key!r} ({guess}valid keys: {valid})")
    if first["type"] == "missing":
        return RecipeError(f"{where}: {_path((*base, *first['loc']))}: required key is missing")
    same_field = [e for e in errors if _data_prefix(data, tuple(e["loc"])) == loc]
    if len(same_field) > 1:  # a union: list what each alternative wanted
        expected = "; ".join(sorted({e["msg"] for e in same_field}))
        message = f"no accepted form matches ({expected})"
    else:
        message = first["msg"]
    got = _value_at(data, loc) if loc else data
    more = f" (+{len(errors) - len(same_field)} more errors)" if len(errors) > len(same_field) else ""
    return RecipeError(f"{where}: {_path(full) if loc else _path(base)}: {message}; got {got!r}{more}")


__all__ = [
    "Recipe",
    "RecipeDocument",
    "PassSpec",
    "ModelSpec",
    "load_recipe",
    "parse_recipe",
    "recipe_from_dict",
    "without_evaluation",
]
