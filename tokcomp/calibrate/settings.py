"""DiffRate's search settings: the one object that goes from the recipe to the search.

The recipe's `diffrate` pass names these keys (`lambda` is written `lambda_` in Python);
an omitted key takes the default here, and a fixed `schedule` takes none of them. The
search, its start and its report all read this object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

LossName = Literal["auto", "kl", "cosine", "ce"]
# Back-loaded (> 1) to front-loaded (< 1) schedule shapes the search may start from; 1 is constant r.
START_POWERS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


@dataclass(frozen=True)
class SearchSettings:
    target_macs: int
    granularity: int = 4  # step between candidate kept counts
    epochs: int = 3  # passes over the calibration data
    lr: float = 0.01  # AdamW learning rate of the rate logits, cosine decay
    lr_min: float = 0.001  # learning rate at the end of the decay
    lambda_: float = 100.0  # weight of ((FLOPs - target) / original FLOPs)^2
    loss: LossName = "auto"  # auto: KL on logits for classifiers, cosine on the pooled output otherwise
    start: Literal["auto"] | float = "auto"  # start shape: the best of START_POWERS, or one power
    proportional_attention: bool = True
    merge_rule: str = "importance"  # reducers.diffrate.MERGE_RULES

    @property
    def start_powers(self) -> tuple[float, ...]:
        return START_POWERS if self.start == "auto" else (float(self.start),)

    def report(self) -> dict:
        """The settings as report.json records them (recipe key names)."""
        settings = asdict(self)
        del settings["target_macs"], settings["proportional_attention"]
        settings["lambda"] = settings.pop("lambda_")
        return settings


# Keys a recipe sets for the search only (not for a fixed schedule).
SEARCH_KEYS = tuple(f.name for f in fields(SearchSettings) if f.name not in ("target_macs", "proportional_attention", "merge_rule"))
