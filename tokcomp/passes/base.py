"""Passes: typed, registered model rewrites driven by the recipe.

A pass has a strict pydantic config (unknown keys rejected), `apply` rewrites the
model in place and returns JSON metadata, and `restore` rebuilds the same structure
on a freshly constructed base model from (config, metadata) alone. The checkpoint
stores the ordered list of PassRecords, so it reloads without the recipe
(ModelOpt's convert/restore pattern).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokcomp.errors import RecipeError

if TYPE_CHECKING:
    from tokcomp.passes.context import PassContext


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PassConfig(StrictModel):
    targets: list[str] | None = Field(
        default=None, description='block names to touch, exact or "re:<regex>"; default: every block'
    )
    ignore: list[str] = Field(default_factory=list, description='block names to leave alone, exact or "re:<regex>"')

    @field_validator("targets", "ignore")
    @classmethod
    def _regexes_compile(cls, patterns):
        for pattern in patterns or []:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return patterns


@dataclass
class PassRecord:
    name: str
    version: int
    config: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "config": self.config, "metadata": self.metadata}


class Pass(ABC):
    name: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type[PassConfig]] = PassConfig
    summary: ClassVar[str] = ""

    @abstractmethod
    def apply(self, model, config: PassConfig, ctx: PassContext) -> dict[str, Any]:
        """Rewrite `model` in place; return JSON metadata that `restore` needs.

        Token-reduction passes include `tokens_per_layer` (see passes/token_reduction.py);
        a `report` entry, if present, is copied into report.json under the pass name.
        """

    @abstractmethod
    def restore(self, model, config: PassConfig, metadata: dict[str, Any]) -> None:
        """Rebuild the structure `apply` produced, from its record alone (no data, no recipe)."""


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> Pass:
    try:
        return PASSES[name]()
    except KeyError:
        raise RecipeError(
            f"unknown pass '{name}'", hint=f"valid pass types: {', '.join(sorted(PASSES))}"
        ) from None


def matches_any(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif pattern == name:
            return True
    return False


def select_blocks(names: list[str], config: PassConfig) -> list[bool]:
    """Which blocks a pass touches, from its targets / ignore lists."""
    chosen = [
        (config.targets is None or matches_any(n, config.targets)) and not matches_any(n, config.ignore)
        for n in names
    ]
    if not any(chosen):
        raise RecipeError(
            f"targets {config.targets} / ignore {config.ignore} select none of the blocks",
            hint=f"block names are {names[0]} ... {names[-1]}",
        )
    return chosen
