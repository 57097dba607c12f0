"""DiffRate's search settings: the one object that goes from the recipe to the search.

The recipe's `diffrate` pass names these keys (`lambda` is written `lambda_` in Python);
an omitted key takes the default here, and a fixed `schedule` takes none of them. The
search, its start, the merge-rule choice and the report all read this object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

LossName = Literal["auto", "kl", "cosine", "ce"]
# Back-loaded (> 1) to front-loaded (< 1) schedule shapes the search may start from; 1 is constant r.
START_POWERS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
# merge_rule `learned`: counts are searched with this rule, then each block's rule is chosen among
# `merge_choices` (calibrate/merge_choice.py); every choice shares its bipartite floor.
LEARNED = "learned"
LEARNED_COUNT_RULE = "bipartite"
MERGE_CHOICES = ("bipartite", "bipartite_keys", "spread")


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
    merge_rule: str = "importance"  # reducers.diffrate.COUNT_RULES, or LEARNED
    merge_choices: tuple[str, ...] = MERGE_CHOICES  # merge_rule learned: the rules each block chooses from

    @property
    def count_rule(self) -> str:
        """The rule the counts are searched with (the soft reducer reproduces it)."""
        return LEARNED_COUNT_RULE if self.merge_rule == LEARNED else self.merge_rule

    @property
    def start_powers(self) -> tuple[float, ...]:
        return START_POWERS if self.start == "auto" else (float(self.start),)

    def report(self) -> dict:
        """The settings as report.json records them (recipe key names)."""
        settings = asdict(self)
        del settings["target_macs"], settings["proportional_attention"]
        settings["lambda"] = settings.pop("lambda_")
        settings["merge_choices"] = list(self.merge_choices)
        if self.merge_rule != LEARNED:
            del settings["merge_choices"]
        return settings


# Keys a recipe sets for the search only (not for a fixed schedule).
SEARCH_KEYS = tuple(f.name for f in fields(SearchSettings) if f.name not in ("target_macs", "proportional_attention", "merge_rule"))
