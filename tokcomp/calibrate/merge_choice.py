"""merge_rule `learned`: every DiffRate block's merge rule, chosen on the calibration data.

DiffRate's search learns how many tokens each block prunes and merges. Which kept tokens
merge, and how (ToMe's matching on the hidden states or on the attention keys, or Token
Transforming's spreading over two targets: reducers/diffrate.py MERGE_RULES), is a
discrete choice its straight-through gradient cannot price. With the counts fixed, a
greedy coordinate search settles it: from the last reducing block to the first, each
block tries every candidate rule while the others hold theirs, and a candidate replaces
the block's rule only when the whole model then scores strictly lower. Later blocks go
first because a change there disturbs nothing downstream of the choices already made.

It starts from the count rule in every block (the plain search's model), so the result
never scores worse than that on the scoring data, and it is deterministic: the same
scores give the same rules. The score is the caller's (search.py: the search's own task
loss on its scoring batches with the real reducers installed, so what is scored is what
compiles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class MergeChoice:
    rules: list[str]  # one per block
    start_score: float  # the count rule everywhere
    score: float  # the chosen rules (never above start_score)
    trials: list[dict] = field(default_factory=list)  # {"block", "rule", "score", "accepted"} in the order tried

    def report(self) -> dict:
        return {"start_score": self.start_score, "score": self.score, "rules": self.rules, "trials": self.trials}


def trial_count(start: Sequence[str], blocks: Sequence[int], candidates: Sequence[str]) -> int:
    """Scores choose_rules computes besides the start's (for a progress bar)."""
    return sum(len([rule for rule in dict.fromkeys(candidates) if rule != start[block]]) for block in blocks)


def choose_rules(
    start: Sequence[str],
    blocks: Sequence[int],
    candidates: Sequence[str],
    score: Callable[[list[str]], float],
    advance: Callable[[str], None] = lambda status: None,
) -> MergeChoice:
    """One greedy pass over `blocks`, last first: each takes the candidate that scores lowest.

    `start`: a rule per block; `score(rules)` is lower for better rules; `advance` is told
    the outcome of every trial.
    """
    rules = list(start)
    best = start_score = score(rules)
    trials = []
    for block in reversed(blocks):
        current = rules[block]
        for rule in dict.fromkeys(candidates):  # unique, in the given order
            if rule == current:
                continue
            trial = [*rules[:block], rule, *rules[block + 1 :]]
            value = score(trial)
            accepted = value < best
            trials.append({"block": block, "rule": rule, "score": value, "accepted": accepted})
            if accepted:
                rules, best = trial, value
            advance(f"block {block} {rule}: loss {value:.5f} (best {best:.5f})")
    return MergeChoice(rules, start_score, best, trials)
