"""Merge choices at ToMe's own counts on short sentences: similarity, a learned merge cost, measured costs.

    python benchmarks/merge_cost_model.py [--calibration 167 100] [--sentences 64] [--threads 1]

benchmarks/merge_oracle.py shows that on 8-16-token sentences MiniLM-L6 with ToMe at -35% FLOPs
(set at 128 tokens, applied as a rate) loses mostly to its choice of which tokens merge. This
measures, at ToMe's counts per block and with ToMe's size-weighted merge, how far other choices go:

- **ToMe**: the compiled reducer (bipartite split on the current order, hidden-state cosine).
- **greedy, cosine**: no split. Pairs (any reducible token into any other) are taken cheapest
  first, a token that has moved or received never moves afterwards; cost = -cosine.
- **greedy, learned cost**: the same greedy choice on a merge cost fitted on calibration text:
  per block, log cost(i, j) = g_i + g_j + b1 log(1 - cos h) + b2 log(1 - cos k)
  + a log(s_i s_j / (s_i + s_j)) + c, with g = w . h linear in the hidden state (h: hidden
  states, k: head-averaged keys, s: sizes; 388 numbers a block), fitted by least squares with
  weight decay to the measured costs below on zoo:prose-calib:en sentences of 8-16 and 17-32
  tokens (never the held-out data).
- **measured cost (bound)**: the cost of merging a pair alone, measured: 1 - cosine of the
  mean-pooled output of the rest of the *unreduced* model to the original's output. It sees the
  original and needs a forward per pair: an analysis bound, not a reducer. Taken with ToMe's
  bipartite split and with the greedy choice. Run on the 8-16 and 17-32 buckets (its cost grows
  with the square of the length).

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
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import bootstrap_mean, load_average, machine, no_timing_line, write_results  # noqa: E402
from benchmarks.dynamic_padding import CUT, REFERENCE_LENGTH, buckets  # noqa: E402
from benchmarks.merge_oracle import apply_merges, finish, pooled, state_of  # noqa: E402
from tokcomp.data.sources import load_samples  # noqa: E402
from tokcomp.pipeline import apply_passes  # noqa: E402
from tokcomp.reducers.matching import alternate_index, matching_from_scores, merge_matched  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.surgery import token_blocks  # noqa: E402

CALIBRATION = "zoo:prose-calib:en"
CALIBRATION_BUCKETS = ((8, 16), (17, 32))
WEIGHT_DECAY = 0.1
FIT_STEPS = 300
BOUND_BUCKETS = ("8-16", "17-32")
ROWS = {  # row -> label
    "tome": "ToMe (bipartite, cosine)",
    "greedy_cosine": "greedy, cosine",
    "greedy_learned": "greedy, learned cost",
    "bipartite_measured": "bipartite, measured cost (bound)",
    "greedy_measured": "greedy, measured cost (bound)",
}

# cost(block, x [1, N, d], size [1, N], keys [1, N, d]) -> [N, N], lower merges first
CostFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rest_unreduced(blocks, start: int, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Mean-pooled output [P, d] of blocks[start:] without reduction; x has passed block start's attention."""
    for index in range(start, len(blocks)):
        if index != start:
            x, _ = blocks[index].attention_residual(x, torch.log(size)[:, None, None, :])
        x = blocks[index].mlp_residual(x)
    return (x * size[..., None]).sum(1) / size.sum(1, keepdim=True)


def measured_costs(blocks, index: int, x: torch.Tensor, size: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[N, N] cost of merging each pair of reducible tokens (1..N-1) alone at block `index`; NaN elsewhere."""
    tokens = x.shape[1]
    first, second = torch.triu_indices(tokens, tokens, 1)
    reducible = first >= 1  # token 0 (CLS) is protected
    first, second = first[reducible], second[reducible]
    pairs = torch.arange(len(first))
    xs, sizes = x.expand(len(first), -1, -1).clone(), size.expand(len(first), -1).clone()
    total = sizes[pairs, first] + sizes[pairs, second]
    merged = xs[pairs, first] * sizes[pairs, first, None] + xs[pairs, second] * sizes[pairs, second, None]
    xs[pairs, second], sizes[pairs, second] = merged / total[:, None], total
    stay = torch.ones(len(first), tokens, dtype=torch.bool)
    stay[pairs, first] = False
    xs, sizes = xs[stay].view(len(first), tokens - 1, -1), sizes[stay].view(len(first), tokens - 1)
    outputs = [rest_unreduced(blocks, index, xs[s : s + 64], sizes[s : s + 64]) for s in range(0, len(first), 64)]
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
    """Cheapest pairs first (either direction); a token that moved or received never moves again."""
    tokens = cost.shape[0]
    cost = cost.nan_to_num(float("inf")).clone()
    cost[0, :] = cost[:, 0] = float("inf")
    cost.fill_diagonal_(float("inf"))
    moved, received, merges = set(), set(), []
    for flat in cost.flatten().argsort().tolist():
        if len(merges) == removal:
            break
        source, target = divmod(flat, tokens)
        if source in moved or source in received or target in moved:
            continue
        moved.add(source)
        received.add(target)
        merges.append((source, target))
    return apply_merges(x, size, merges, [t for t in range(tokens) if t not in moved])


def run_with(blocks, embeddings, ids: torch.Tensor, cost: CostFn, merge) -> torch.Tensor:
    """Pooled output when every reducing block runs `merge(x, size, cost(...), removal)`."""
    x, size = embeddings(input_ids=ids), torch.ones(1, ids.shape[1])
    for index, block in enumerate(blocks):
        x, info = block.attention_residual(x, torch.log(size)[:, None, None, :])
        removal = block.reducer.removal(x.shape[1] - 1)
        if removal:
            x, size = merge(x, size, cost(index, x, size, info.key_metric()), removal)
        x = block.mlp_residual(x)
    return pooled(x, size)


def negative_cosine(index, x, size, keys) -> torch.Tensor:
    unit = F.normalize(x[0], dim=-1)
    return -(unit @ unit.T)


class CostModel(torch.nn.Module):
    """log cost = g_i + g_j + b1 log(1 - cos h) + b2 log(1 - cos k) + a log harmonic size + c, g = w . h."""

    def __init__(self, hidden: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden))
        self.coefficients = torch.nn.Parameter(torch.tensor([1.0, 0.0, 1.0, 0.0]))  # b1, b2, a, c

    def forward(self, x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """x, keys [N, d], size [N] -> [N, N]."""

        def log_distance(features):
            unit = F.normalize(features, dim=-1)
            return torch.log((1 - unit @ unit.T).clamp_min(1e-4))

        harmonic = torch.log(size[:, None] * size[None] / (size[:, None] + size[None]))
        token = x @ self.weight
        hidden_term, key_term, size_term, bias = self.coefficients
        return (
            token[:, None]
            + token[None]
            + hidden_term * log_distance(x)
            + key_term * log_distance(keys)
            + size_term * harmonic
            + bias
        )


def collect(blocks, embeddings, original, tokenizer, texts: list[str]) -> list[dict]:
    """Measured pair costs at every reducing block, along the greedy measured-cost merges."""
    records = []
    for number, text in enumerate(texts, start=1):
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        reference = original(input_ids=ids).last_hidden_state.mean(1)

        def measured(index, x, size, keys, reference=reference):
            cost = measured_costs(blocks, index, x, size, reference)
            records.append(
                {"block": index, "x": x[0].clone(), "size": size[0].clone(), "keys": keys[0].clone(), "cost": cost}
            )
            return cost

        run_with(blocks, embeddings, ids, measured, greedy_merge)
        if number % 25 == 0 or number == len(texts):
            print(f"measured costs: {number}/{len(texts)} calibration sentences", flush=True)
    return records


def fit(records: list[dict], blocks: int) -> list[CostModel]:
    models = []
    for block in range(blocks):
        # clone(): the records were made under inference mode, whose tensors autograd cannot save
        data = [
            (r["x"].clone(), r["size"].clone(), r["keys"].clone(), ~r["cost"].isnan(), r["cost"].clamp_min(1e-7).log())
            for r in records
            if r["block"] == block
        ]
        model = CostModel(records[0]["x"].shape[-1])
        if data:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            for _ in range(FIT_STEPS):
                optimizer.zero_grad()
                loss = sum((model(x, s, k)[m] - y[m]).pow(2).mean() for x, s, k, m, y in data) / len(data)
                (loss + WEIGHT_DECAY * model.weight.pow(2).sum()).backward()
                optimizer.step()
            print(f"block {block}: {len(data)} records, fit loss {loss.item():.3f}", flush=True)
        models.append(model.requires_grad_(False))
    return models


def run(args) -> dict:
    loaded = load_model("zoo:minilm-l6")
    tokenizer, original = loaded.processor, loaded.model
    model = copy.deepcopy(original)
    apply_passes(model, [{"type": "tome", "target_flops": CUT}], sequence_length=REFERENCE_LENGTH)
    blocks, embeddings = token_blocks(model), model.embeddings

    calibration = [sample.value for sample in load_samples(CALIBRATION, "text")]
    lengths = [len(tokenizer(text)["input_ids"]) for text in calibration]
    fit_texts = []
    for (low, high), count in zip(CALIBRATION_BUCKETS, args.calibration, strict=True):
        fit_texts += [t for t, n in zip(calibration, lengths, strict=True) if low <= n <= high][:count]
    with torch.inference_mode():
        records = collect(blocks, embeddings, original, tokenizer, fit_texts)
    models = fit(records, len(blocks))

    def learned(index, x, size, keys):
        return models[index](x[0], size[0], keys[0])

    rows = {}
    with torch.inference_mode():
        for bucket, texts in buckets(tokenizer, args.sentences).items():
            scores = {name: [] for name in ROWS}
            for text in texts:
                ids = tokenizer([text], return_tensors="pt")["input_ids"]
                reference = original(input_ids=ids).last_hidden_state.mean(1)

                def measured(index, x, size, keys, reference=reference):
                    return measured_costs(blocks, index, x, size, reference)

                outputs = {
                    "tome": finish(blocks, 0, embeddings(input_ids=ids), torch.ones(1, ids.shape[1]), False),
                    "greedy_cosine": run_with(blocks, embeddings, ids, negative_cosine, greedy_merge),
                    "greedy_learned": run_with(blocks, embeddings, ids, learned, greedy_merge),
                }
                if bucket in BOUND_BUCKETS:
                    outputs["bipartite_measured"] = run_with(blocks, embeddings, ids, measured, tome_merge)
                    outputs["greedy_measured"] = run_with(blocks, embeddings, ids, measured, greedy_merge)
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
        "calibration": {
            "data": CALIBRATION,
            "buckets": [list(b) for b in CALIBRATION_BUCKETS],
            "sentences": len(fit_texts),
            "block_records": len(records),
            "weight_decay": WEIGHT_DECAY,
            "steps": FIT_STEPS,
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

    calibration = result["calibration"]
    lines = [
        "# Merge choices at ToMe's counts, MiniLM-L6 at -35% FLOPs (set at 128 tokens)",
        "",
        (
            f"Held-out: {result['data']}, one sentence at a time. Learned cost fitted on "
            f"{calibration['sentences']} sentences of {calibration['data']} "
            f"({', '.join(f'{lo}-{hi}' for lo, hi in calibration['buckets'])} tokens; "
            f"{calibration['block_records']} block records). Measured costs see the original's output: "
            "bounds, not reducers. Cells: cosine of the size-weighted mean-pooled output to the original's "
            "(mean, 95% bootstrap interval); then the difference to ToMe, paired per sentence, with its interval."
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
    parser.add_argument(
        "--calibration", type=int, nargs=2, default=[167, 100], help="sentences of 8-16 and 17-32 tokens"
    )
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    write_results(ROOT / "benchmarks" / "results", "merge_cost_model", result, markdown(result))


if __name__ == "__main__":
    main()
