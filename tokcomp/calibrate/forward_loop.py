"""A user's own calibration loop, `path/to/file.py:function`, run once to record inputs.

Opt-in only (the recipe names it under `calibration.forward_loop`): it executes the
user's file. The function is called once as `function(model)` and runs its inputs
through `model(**inputs)` (or `model(tensor)` for pixel values / input ids), the way
calibration loops of other toolkits are written. tokcomp runs the original model on
each call, returns its output, and records the inputs; the search then replays the
recorded batches for every epoch. A "labels" entry is kept for loss: ce.
Under torchrun each rank should feed its own share; every rank uses as many batches
as the rank with the fewest.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError

HINT = "calibration.forward_loop must name an existing file and function: 'path/to/file.py:function'"


def load_callable(spec: str) -> Callable:
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise TokcompError(f"forward_loop file {path} not found (paths are relative to the working folder)", hint=HINT)
    module_spec = importlib.util.spec_from_file_location(f"tokcomp_forward_loop_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise TokcompError(f"{path} defines no function '{name}'", hint=HINT)
    return function


class _Recorder:
    """Stands in for the model inside the user's loop: runs the original, keeps the inputs."""

    def __init__(self, model: nn.Module, input_name: str):
        self._model = model
        self._input_name = input_name
        self.batches: list[dict[str, Tensor]] = []

    def __call__(self, *args: Any, **kwargs: Any):
        if args:
            if len(args) > 1 or not isinstance(args[0], Tensor):
                raise TokcompError("forward_loop must call model(**inputs) or model(tensor)", hint=HINT)
            kwargs = {self._input_name: args[0], **kwargs}
        batch = {k: v.detach() for k, v in kwargs.items() if isinstance(v, Tensor)}
        self.batches.append(batch)
        with torch.no_grad():
            return self._model(**{k: v for k, v in batch.items() if k != "labels"})

    def __getattr__(self, name: str):  # config, device, eval() ... of the real model
        return getattr(self._model, name)


def record_batches(spec: str, model: nn.Module, modality: str) -> list[dict[str, Tensor]]:
    """Run the user's loop once over `model` and return the batches it fed."""
    recorder = _Recorder(model, "pixel_values" if modality == "image" else "input_ids")
    load_callable(spec)(recorder)
    if not recorder.batches:
        raise TokcompError(f"forward_loop {spec} never called the model", hint=HINT)
    return recorder.batches
