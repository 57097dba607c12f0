"""Result files found beside a checkpoint (eval*.json, bench*.json) and how to show any JSON as rows.

Files are discovered by name, so a new kind of result (another benchmark, an export
check) appears in the report without code here: JSON this module does not know is
flattened into (key path, value) rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_PREFIXES = ("eval", "bench")
MAX_ROWS = 200  # a page, not a dump: longer results are cut with a note
MAX_LIST = 12  # longer lists of numbers are summarised


@dataclass(frozen=True)
class ResultFile:
    path: Path
    data: Any
    error: str | None = None  # set when the file is not valid JSON

    @property
    def kind(self) -> str:
        if isinstance(self.data, dict) and isinstance(self.data.get("kind"), str):
            return self.data["kind"]
        return self.path.stem


def find_results(folder: Path) -> list[ResultFile]:
    """eval*.json first (accuracy before speed), then bench*.json, each in name order."""
    found = []
    for path in sorted(folder.glob("*.json"), key=lambda p: (not p.name.lower().startswith("eval"), p.name)):
        if not path.name.lower().startswith(RESULT_PREFIXES):
            continue
        try:
            found.append(ResultFile(path, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            found.append(ResultFile(path, None, f"cannot read {path.name}: {exc}"))
    return found


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested JSON -> [(dotted key path, formatted value)]."""
    if isinstance(data, dict):
        rows = []
        for key, value in data.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(data, list):
        if all(not isinstance(v, (dict, list)) for v in data):
            shown = [fmt(v) for v in data]
            if len(shown) > MAX_LIST:
                shown = [*shown[:5], f"... ({len(shown)} values) ...", *shown[-3:]]
            return [(prefix, "[" + ", ".join(shown) + "]")]
        rows = []
        for index, value in enumerate(data):
            rows += flatten(value, f"{prefix}[{index}]")
        return rows
    return [(prefix, fmt(data))]
