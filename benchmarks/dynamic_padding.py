"""One MiniLM checkpoint, every sentence length: fidelity and FLOPs under dynamic padding.

    python benchmarks/dynamic_padding.py [--per-bucket 64] [--batch 16]

zoo:minilm-l6 is compressed once at -35% FLOPs for the reference input of 128 tokens (the
recipe default), then fed held-out English prose (sentences from Python's own reference
documentation, `tokcomp.zoo.samples.english_prose`; no pass here calibrates, so none saw
them) in dynamically padded batches, bucketed by real length: 8-16, 17-32 and 33-64 tokens.

Reducers: ToMe (with its BERT-family default metric, hidden states, and with attention keys,
its vision default; with greedy matching instead of its bipartite split; greedy with the
norm-preserving merge; and that with `cost: learned`, a merge cost fitted during the compile on
calibration text: Debian Reference prose, `zoo:prose:en`, never the held-out sentences), Token
Transforming and Zero-TPrune at their defaults. Per bucket and reducer:
- fidelity: cosine of the size-weighted mean-pooled embedding to the original model's mean
  over the real tokens, with a 95% bootstrap interval and the minimum;
- the same for random token dropping at the same rates (the simple baseline);
- the real-token FLOPs cut: for every sentence, 1 - MACs of the compressed model at its own
  length / MACs of the original at that length (mean, min, max over the bucket);
- batch invariance: the largest difference between a sentence's pooled embedding in its padded
  batch and the same sentence run alone.

Writes benchmarks/results/dynamic_padding.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bootstrap_mean, load_average, machine, write_results  # noqa: E402
from tokcomp.analysis.baselines import random_drop_like  # noqa: E402
from tokcomp.analysis.fidelity import model_outputs  # noqa: E402
from tokcomp.analysis.flops import model_macs  # noqa: E402
from tokcomp.pipeline import apply_passes  # noqa: E402
from tokcomp.reducers.schedule import tokens_after_layers  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.surgery import find_adapter, token_blocks  # noqa: E402
from tokcomp.surgery.adapters.base import InputSpec  # noqa: E402
from tokcomp.zoo.samples import english_prose  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BUCKETS = ((8, 16), (17, 32), (33, 64))
REFERENCE_LENGTH = 128
CUT = "-35%"
PASSES = {
    "ToMe": {"type": "tome", "target_flops": CUT},  # BERT-family default metric: hidden states
    "ToMe, metric: keys": {"type": "tome", "target_flops": CUT, "metric": "keys"},  # the vision default
    "ToMe, matching: greedy": {"type": "tome", "target_flops": CUT, "matching": "greedy"},
    "ToMe, greedy, norm-preserving": {
        "type": "tome",
        "target_flops": CUT,
        "matching": "greedy",
        "merge": "norm_preserving",
    },
    "ToMe, greedy, norm-preserving, learned cost": {
        "type": "tome",
        "target_flops": CUT,
        "matching": "greedy",
        "merge": "norm_preserving",
        "cost": "learned",
    },
    "Token Transforming": {"type": "token_transform", "target_flops": CUT},
    "Zero-TPrune": {"type": "zero_tprune", "target_flops": CUT},
}


def at_counts(name: str, r_per_layer: list[int]) -> dict:
    """Pass `name` at fixed tokens removed per block (at the reference input) instead of its FLOPs target."""
    spec = {key: value for key, value in PASSES[name].items() if key != "target_flops"}
    return {**spec, "r": r_per_layer}


# Rows that calibrate: Debian Reference prose, disjoint from the held-out Python documentation.
CALIBRATION = {"ToMe, greedy, norm-preserving, learned cost": {"data": "zoo:prose:en", "samples": 800}}


def buckets(tokenizer, per_bucket: int) -> dict[str, list[str]]:
    sentences = english_prose()
    lengths = [len(tokenizer(s)["input_ids"]) for s in sentences]
    return {
        f"{low}-{high}": [s for s, n in zip(sentences, lengths, strict=True) if low <= n <= high][:per_bucket]
        for low, high in BUCKETS
    }


def flops_cut(model, reducers, length: int, count_cost_model: bool = False) -> float:
    """FLOPs cut at `length` tokens; with `count_cost_model` the learned merge costs' own MACs count too."""
    geometry = find_adapter(model).geometry(model, InputSpec("text", sequence_length=length))
    dense = model_macs(geometry, [length] * geometry.num_layers)
    after = tokens_after_layers(length, reducers)
    return 1 - model_macs(geometry, after, reducers if count_cost_model else None) / dense


def cosines(original, model, tokenizer, texts: list[str], batch: int) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch):
        inputs = dict(tokenizer(texts[start : start + batch], padding=True, return_tensors="pt"))
        reference = model_outputs(original, inputs, "mean")["embedding"]
        out.append(F.cosine_similarity(reference, model_outputs(model, inputs, "mean")["embedding"]))
    return torch.cat(out)


def batch_invariance(model, tokenizer, texts: list[str], batch: int) -> float:
    """Largest |pooled(in its padded batch) - pooled(alone)| over the first batch of a bucket."""
    texts = texts[:batch]
    padded = model_outputs(model, dict(tokenizer(texts, padding=True, return_tensors="pt")), "mean")["embedding"]
    worst = 0.0
    for row, text in enumerate(texts):
        alone = model_outputs(model, dict(tokenizer([text], return_tensors="pt")), "mean")["embedding"][0]
        worst = max(worst, (padded[row] - alone).abs().max().item())
    return worst


def run(args) -> dict:
    loaded = load_model("zoo:minilm-l6")
    tokenizer, original = loaded.processor, loaded.model
    texts = buckets(tokenizer, args.per_bucket)
    rows = []
    for name, spec in PASSES.items():
        model = copy.deepcopy(original)
        calibration = CALIBRATION.get(name)
        (record,) = apply_passes(
            model,
            [spec],
            sequence_length=REFERENCE_LENGTH,
            processor=tokenizer,
            calibration=calibration,
            # the model's own pooling (sentence-transformers' mean; its BertModel also has a pooler): the
            # learned cost must measure merges on the embedding its users get
            pooling=loaded.pooling,
        )
        meta = record.metadata
        reducers = [block.reducer for block in token_blocks(model)]
        baseline = random_drop_like(original, meta["input_tokens"], meta["tokens_per_layer"], seed=0)
        learned = meta.get("report", {}).get("merge_cost")
        row = {
            "reducer": name,
            "pass": spec,
            "calibration": learned and learned["calibration"],
            "cost_model": meta.get("merge_cost"),
            "reference_cut": 1 - meta["gmacs"] / _dense_gmacs(original),
            "buckets": {},
        }
        for label, bucket in texts.items():
            lengths = [len(tokenizer(t)["input_ids"]) for t in bucket]
            cuts = torch.tensor([flops_cut(original, reducers, n) for n in lengths])
            row["buckets"][label] = {
                "sentences": len(bucket),
                "tokens": [min(lengths), max(lengths)],
                "cosine": bootstrap_mean(cosines(original, model, tokenizer, bucket, args.batch)),
                "random_drop": bootstrap_mean(cosines(original, baseline, tokenizer, bucket, args.batch)),
                "flops_cut": {"mean": cuts.mean().item(), "min": cuts.min().item(), "max": cuts.max().item()},
                "flops_cut_counting_cost_model": (
                    sum(flops_cut(original, reducers, n, count_cost_model=True) for n in lengths) / len(lengths)
                    if learned
                    else None
                ),
                "batch_invariance_max_abs": batch_invariance(model, tokenizer, bucket, args.batch),
            }
            print(name, label, json.dumps(row["buckets"][label]["cosine"]), flush=True)
        rows.append(row)
    return {
        "model": "zoo:minilm-l6",
        "reference_length": REFERENCE_LENGTH,
        "cut": CUT,
        "data": "held-out English prose (Python reference documentation, tokcomp.zoo.samples.english_prose)",
        "machine": {**machine(), "load_average": load_average()},
        "rows": rows,
    }


def _dense_gmacs(model) -> float:
    geometry = find_adapter(model).geometry(model, InputSpec("text", sequence_length=REFERENCE_LENGTH))
    return model_macs(geometry, [REFERENCE_LENGTH] * geometry.num_layers) / 1e9


def _cost_model(row: dict) -> str:
    """What a learned cost computes per token, in words."""
    shape = row["cost_model"]
    if not shape["hidden"]:
        return f"linear: a dot product a token, evaluated on each token's {shape['candidates']} candidate partners"
    return f"a pair MLP of width {shape['hidden']} on each token's {shape['candidates']} candidate partners"


def markdown(result: dict) -> str:
    labels = [f"{low}-{high}" for low, high in BUCKETS]
    lines = [
        f"# MiniLM-L6 compressed once ({result['cut']} FLOPs at {result['reference_length']} tokens), "
        "fed dynamically padded batches",
        "",
        f"Data: {result['data']}; per bucket the first sentences of that real length "
        "(counts below). Fidelity: cosine of the size-weighted mean-pooled embedding to the original's "
        "(mean, 95% bootstrap interval, minimum). FLOPs cut: per sentence at its own length (mean, range).",
        "",
        "| reducer | bucket (tokens) | sentences | cosine | random drop | FLOPs cut | padded vs alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for label in labels:
            b = row["buckets"][label]
            c, r, f = b["cosine"], b["random_drop"], b["flops_cut"]
            lines.append(
                f"| {row['reducer']} | {label} | {b['sentences']} | {c['mean']:.4f} ({c['ci95'][0]:.4f}-{c['ci95'][1]:.4f}), "
                f"min {c['min']:.3f} | {r['mean']:.4f} | {100 * f['mean']:.1f}% ({100 * f['min']:.1f}-{100 * f['max']:.1f}%) "
                f"| {b['batch_invariance_max_abs']:.1e} |"
            )
    lines += [
        "",
        (
            "ToMe's similarity metric on BERT-family encoders defaults to the hidden states (passes/tome.py); "
            "with it ToMe is the same construction as Token Transforming's default (k = 1, alternating targets, "
            "hidden states), so those two rows coincide. The `metric: keys` row is ToMe with the attention keys "
            "averaged over heads, its metric on vision models and its only metric before. The `matching: greedy` "
            "row is ToMe without the bipartite split: the most similar allowed pair merges first, over all pairs "
            "(reducers/greedy_matching.py); `norm-preserving` also rescales each merged token to the size-weighted "
            "mean of its tokens' norms; `learned cost` ranks greedy matching's pairs by a per-block merge cost "
            "fitted during the compile on calibration text (reducers/merge_cost.py, calibrate/merge_cost.py): "
            + "; ".join(
                f"{row['reducer']}: {row['calibration']['used']} of {row['calibration']['drawn']} sentences drawn "
                f"from {row['calibration']['data']} (the others are longer than cost_model.max_tokens), costs "
                f"measured on the {row['calibration']['pooling']}-pooled embedding, as the model's users pool it"
                for row in result["rows"]
                if row.get("calibration")
            )
            + ". "
            + " ".join(
                f"The {row['reducer']} row's target_flops budget counts its own cost model ({_cost_model(row)}, "
                "reducers/merge_cost.py LearnedMergeCost.macs), which its FLOPs cut column leaves out like every "
                "other row's matching; "
                "counting it the cut is "
                + " / ".join(f"{100 * row['buckets'][label]['flops_cut_counting_cost_model']:.1f}%" for label in labels)
                + " (mean per bucket)."
                for row in result["rows"]
                if row.get("calibration")
            )
        ),
        "",
        "Reference-input cut (128 tokens): "
        + ", ".join(f"{row['reducer']} {100 * row['reference_cut']:.1f}%" for row in result["rows"])
        + ".",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, "
        f"load average {result['machine']['load_average']} (no timings in this table).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-bucket", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    result = run(args)
    write_results(RESULTS, "dynamic_padding", result, markdown(result))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
