"""Merge choices at ToMe's own counts on short sentences: similarity, the learned merge cost, measured costs.

    python benchmarks/merge_cost_model.py [--sentences 64] [--threads 2]

benchmarks/merge_oracle.py shows that on 8-16-token sentences MiniLM-L6 with ToMe at -35% FLOPs
(set at 128 tokens, applied as a rate) loses mostly to its choice of which tokens merge. This
measures, at ToMe's counts per block, how far other choices go:

- **ToMe**: the compiled reducer (bipartite split on the current order, hidden-state cosine).
- **greedy, cosine**: `matching: greedy` (reducers/greedy_matching.py): no split, the most similar
  allowed pair first; a token that has moved or received never moves again.
- **greedy, learned cost, norm-preserving**: the `cost: learned` pass as it compiles, at ToMe's
  counts (`matching: greedy`, `merge: norm_preserving`; reducers/merge_cost.py, calibrated by
  calibrate/merge_cost.py on Debian Reference prose, `zoo:prose:en`, 800 drawn, those of at most
  32 tokens measured: the calibration of benchmarks/dynamic_padding.py).
- **measured cost (bound)**: the cost of merging a pair alone, measured: 1 - cosine of the
  mean-pooled output of the rest of the *unreduced* model to the original's output, for every
  pair. It sees the original and needs a forward per pair: an analysis bound, not a reducer. Taken
  with ToMe's bipartite split and with greedy matching (reducers/greedy_matching.py). Run on the
  8-16 and 17-32 buckets (its cost grows with the cube of the length).

Held-out data: the sentences of benchmarks/dynamic_padding.py (Python reference documentation),
one at a time; fidelity: cosine of the size-weighted mean-pooled output to the original model's
(mean, 95% bootstrap interval; differences paired per sentence). No timing. The numbers repeat
exactly at the recorded thread count; another count can flip a near-tie in a greedy choice.
Writes benchmarks/results/merge_cost_model.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bootstrap_mean, load_average, machine, no_timing_line, write_results  # noqa: E402
from benchmarks.dynamic_padding import CALIBRATION, CUT, PASSES, REFERENCE_LENGTH, at_counts, buckets  # noqa: E402
from benchmarks.merge_oracle import pooled, state_of  # noqa: E402
from tokcomp.analysis.fidelity import model_outputs  # noqa: E402
from tokcomp.calibrate.merge_cost import Measurement, pooled_after_merging  # noqa: E402
from tokcomp.pipeline import apply_passes  # noqa: E402
from tokcomp.reducers.greedy_matching import merge_greedy  # noqa: E402
from tokcomp.reducers.matching import alternate_index, matching_from_scores, merge_matched  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.surgery import token_blocks  # noqa: E402

LEARNED = "ToMe, greedy, norm-preserving, learned cost"  # the row of benchmarks/dynamic_padding.py
BOUND_BUCKETS = ("8-16", "17-32")
ROWS = {  # row -> label
    "tome": "ToMe (bipartite, cosine)",
    "greedy_cosine": "greedy, cosine",
    "greedy_learned": "greedy, learned cost (the `cost: learned` pass), norm-preserving merge",
    "bipartite_measured": "bipartite, measured cost (bound)",
    "greedy_measured": "greedy, measured cost (bound)",
}


def measured_costs(blocks, index: int, x: torch.Tensor, size: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[N, N] cost of merging each pair of reducible tokens (1..N-1) alone at block `index`, the rest of the
    blocks unreduced (calibrate/merge_cost.py, which measures `cost: learned`'s candidates the same way); NaN
    elsewhere."""
    tokens = x.shape[1]
    first, second = torch.triu_indices(tokens, tokens, 1)
    reducible = first >= 1  # token 0 (CLS) is protected
    first, second = first[reducible], second[reducible]
    measurement = Measurement(pooling="mean", preserve_norm=False)
    outputs = [
        pooled_after_merging(blocks, index, x, state_of(size), first[s : s + 256], second[s : s + 256], measurement)
        for s in range(0, len(first), 256)
    ]
    cost = torch.full((tokens, tokens), float("nan"))
    cost[first, second] = cost[second, first] = 1 - F.cosine_similarity(reference, torch.cat(outputs))
    return cost


def tome_merge(x: torch.Tensor, size: torch.Tensor, cost: torch.Tensor, removal: int):
    """ToMe's own matching and merge (reducers/matching.py) on a cost instead of a similarity."""
    tokens = x.shape[1]
    a_index, b_index = (alternate_index(tokens, start, x.device) for start in (0, 1))
    scores = -cost.nan_to_num(float("inf"))[a_index][:, b_index][None]
    state = state_of(size)
    matching = matching_from_scores(scores, state, a_index, b_index)
    x, state = merge_matched(x, state, matching, removal, removal, tokens - removal)
    return x, state.size


def greedy_merge(x: torch.Tensor, size: torch.Tensor, cost: torch.Tensor, removal: int):
    """Greedy matching (reducers/greedy_matching.py) on a cost instead of a similarity: cheapest pair first."""
    tokens = x.shape[1]
    x, state = merge_greedy(x, state_of(size), -cost.nan_to_num(float("inf"))[None], removal, removal, tokens - removal)
    return x, state.size


def measured_bound(blocks, embeddings, ids: torch.Tensor, reference: torch.Tensor, merge) -> torch.Tensor:
    """Pooled output when every reducing block runs `merge(x, size, measured cost, removal)`."""
    x, size = embeddings(input_ids=ids), torch.ones(1, ids.shape[1])
    for index, block in enumerate(blocks):
        x, _ = block.attention_residual(x, torch.log(size)[:, None, None, :])
        removal = block.reducer.removal(x.shape[1] - 1)
        if removal:
            x, size = merge(x, size, measured_costs(blocks, index, x, size, reference), removal)
        x = block.mlp_residual(x)
    return pooled(x, size)


def compiled(loaded, name: str, r_per_layer: list[int] | None = None):
    """(a copy of MiniLM (`loaded`, from load_model) compiled with benchmarks/dynamic_padding.py's pass `name`
    and its calibration, the pass metadata); with `r_per_layer`, at those counts instead of the pass's FLOPs
    target. A learned cost measures on the model's own pooling (mean for all-MiniLM-L6-v2)."""
    model = copy.deepcopy(loaded.model)
    spec = PASSES[name] if r_per_layer is None else at_counts(name, r_per_layer)
    (record,) = apply_passes(
        model,
        [spec],
        sequence_length=REFERENCE_LENGTH,
        processor=loaded.processor,
        calibration=CALIBRATION.get(name),
        pooling=loaded.pooling,
    )
    return model, record.metadata


def run(args) -> dict:
    loaded = load_model("zoo:minilm-l6")
    tokenizer, original = loaded.processor, loaded.model
    tome, tome_record = compiled(loaded, "ToMe")
    models = {"tome": tome, "greedy_cosine": compiled(loaded, "ToMe, matching: greedy")[0]}
    # at ToMe's counts: its own target_flops budget, which counts the cost model's MACs, removes more
    models["greedy_learned"], learned = compiled(loaded, LEARNED, tome_record["r_per_layer"])
    blocks = token_blocks(models["tome"])  # ToMe's counts; the bounds take its blocks' reducers for them
    embeddings = models["tome"].embeddings

    rows = {}
    with torch.inference_mode():
        for bucket, texts in buckets(tokenizer, args.sentences).items():
            scores = {name: [] for name in ROWS}
            for text in texts:
                inputs = dict(tokenizer([text], return_tensors="pt"))
                reference = model_outputs(original, inputs, "mean")["embedding"]
                outputs = {name: model_outputs(model, inputs, "mean")["embedding"] for name, model in models.items()}
                if bucket in BOUND_BUCKETS:
                    ids = inputs["input_ids"]
                    outputs["bipartite_measured"] = measured_bound(blocks, embeddings, ids, reference, tome_merge)
                    outputs["greedy_measured"] = measured_bound(blocks, embeddings, ids, reference, greedy_merge)
                for name, output in outputs.items():
                    scores[name].append(F.cosine_similarity(reference, output).item())
            tome = torch.tensor(scores["tome"])
            rows[bucket] = {"sentences": len(texts)}
            for name, values in scores.items():
                if values:
                    rows[bucket][name] = bootstrap_mean(torch.tensor(values))
                    if name != "tome":
                        rows[bucket][f"{name}_minus_tome"] = bootstrap_mean(torch.tensor(values) - tome)
            rows[bucket]["per_sentence"] = scores
            print(
                bucket,
                {name: round(rows[bucket][name]["mean"], 4) for name in ROWS if name in rows[bucket]},
                flush=True,
            )
    return {
        "model": "zoo:minilm-l6",
        "pass": {"type": "tome", "target_flops": CUT, "reference_tokens": REFERENCE_LENGTH},
        "learned_cost": {
            "pass": PASSES[LEARNED],
            "r_per_layer": learned["r_per_layer"],
            "calibration": learned["report"]["merge_cost"],
        },
        "data": "held-out English prose (tokcomp.zoo.samples.english_prose), as benchmarks/dynamic_padding.py",
        "buckets": rows,
        "machine": {**machine(), "load_average": load_average()},
    }


def markdown(result: dict) -> str:
    def cell(row: dict, name: str) -> str:
        if name not in row:
            return "not run"
        low, high = row[name]["ci95"]
        text = f"{row[name]['mean']:.4f} ({low:.4f}-{high:.4f})"
        if f"{name}_minus_tome" in row:
            gain = row[f"{name}_minus_tome"]
            text += f"; {gain['mean']:+.4f} [{gain['ci95'][0]:+.4f}, {gain['ci95'][1]:+.4f}]"
        return text

    calibration = result["learned_cost"]["calibration"]["calibration"]
    lines = [
        "# Merge choices at ToMe's counts, MiniLM-L6 at -35% FLOPs (set at 128 tokens)",
        "",
        (
            f"Held-out: {result['data']}, one sentence at a time. The learned cost is the `cost: learned` pass at "
            f"ToMe's counts (r = {result['learned_cost']['r_per_layer']} at 128 tokens; its own -35% budget, which "
            "counts the cost model, removes more: benchmarks/results/dynamic_padding.md), "
            f"calibrated on {calibration['used']} of {calibration['drawn']} sentences drawn from "
            f"{calibration['data']} (those of at most cost_model.max_tokens tokens), its costs measured on the "
            f"{calibration['pooling']}-pooled embedding. Measured costs see the "
            "original's output: bounds, not reducers. Cells: cosine of the size-weighted mean-pooled output to the "
            "original's (mean, 95% bootstrap interval); then the difference to ToMe, paired per sentence, with its "
            "interval."
        ),
        "",
        "| merge choice | "
        + " | ".join(f"{b} tokens ({row['sentences']})" for b, row in result["buckets"].items())
        + " |",
        "|---|" + "---|" * len(result["buckets"]),
    ]
    for name, label in ROWS.items():
        lines.append(f"| {label} | " + " | ".join(cell(row, name) for row in result["buckets"].values()) + " |")
    lines += ["", no_timing_line(result["machine"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    write_results(ROOT / "benchmarks" / "results", "merge_cost_model", result, markdown(result))


if __name__ == "__main__":
    main()
