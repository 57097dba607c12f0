"""What a pass may use besides the model and its own config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tokcomp.surgery.adapters.base import InputSpec

if TYPE_CHECKING:  # the recipe and the model sources import every pass
    from tokcomp.recipe import CalibrationSpec
    from tokcomp.sources import LoadedModel


@dataclass
class PassContext:
    input_spec: InputSpec  # the reference input budgets are resolved at
    seed: int = 0
    calibration: CalibrationSpec | None = None  # data for passes that learn (DiffRate's search)
    loaded: LoadedModel | None = None  # the model's source and processor; passes may replace the processor
    # Callables(folder) that write a pass's extra files into the checkpoint.
    file_writers: list[Callable[[Path], None]] = field(default_factory=list)
