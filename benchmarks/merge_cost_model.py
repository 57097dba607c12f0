"""Merge choices at ToMe's own counts on short sentences: similarity, a learned merge cost, measured costs.

    python benchmarks/merge_cost_model.py [--calibration 167 498 100] [--sentences 64] [--threads 1]

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
  weight decay to the measured costs below (every pair of a calibration sentence, each sentence
  weighted alike).
- **greedy, learned cost with pair MLP**: the same cost plus a small MLP of the pair,
  [h_i * h_j, |h_i - h_j|] -> 32 -> 1 (24,641 more numbers a block), fitted the same way.
- **... norm-preserving merge**: that choice, with each merged token rescaled to the size-weighted
  mean norm of its parts (benchmarks/merge_oracle.apply_merges).
- **measured cost (bound)**: the cost of merging a pair alone, measured: 1 - cosine of the
  mean-pooled output of the rest of the *unreduced* model to the original's output. It sees the
  original and needs a forward per pair: an analysis bound, not a reducer. Taken with ToMe's
  bipartite split and with the greedy choice. Run on the 8-16 and 17-32 buckets (its cost grows
  with the square of the length).

Calibration: sentences of 8-16 tokens from zoo:prose-calib:en and zoo:prose:en (Debian Reference
prose, both splits) and of 17-32 tokens from zoo:prose-calib:en; never the held-out data. The
learned costs are evaluated on the held-out Python documentation only.

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

# (data, token range): the calibration sentences, disjoint from the held-out Python documentation
CALIBRATION = (("zoo:prose-calib:en", (8, 16)), ("zoo:prose:en", (8, 16)), ("zoo:prose-calib:en", (17, 32)))
WEIGHT_DECAY = 0.1  # on the linear token term
LINEAR_STEPS = 300
PAIR_HIDDEN = 32
PAIR_STEPS = 700
PAIR_LR = 3e-3
PAIR_WEIGHT_DECAY = 0.01
BOUND_BUCKETS = ("8-16", "17-32")
ROWS = {  # row -> label
    "tome": "ToMe (bipartite, cosine)",
    "greedy_cosine": "greedy, cosine",
    "greedy_learned": "greedy, learned cost",
    "greedy_pair": "greedy, learned cost with pair MLP",
    "greedy_pair_norm": "greedy, learned cost with pair MLP, norm-preserving merge",
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


def greedy_merge(x: torch.Tensor, size: torch.Tensor, cost: torch.Tensor, removal: int, preserve_norm: bool = False):
    """Cheapest pairs first (either direction); a token that moved or received never moves again.

    The rule of tokcomp/reducers/greedy_matching.py (`matching: greedy`), which came later; this copy
    breaks exact ties by argsort rather than by index, and the committed results were made with it.
    """
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
    return apply_merges(x, size, merges, [t for t in range(tokens) if t not in moved], preserve_norm)


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
    """log cost(i, j) = g_i + g_j + b1 log(1 - cos h) + b2 log(1 - cos k) + a log harmonic size + c, g = w . h;
    with `hidden` > 0 plus a pair MLP of [h_i * h_j, |h_i - h_j|] (symmetric in i and j)."""

    def __init__(self, width: int, hidden: int = 0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(width))
        self.coefficients = torch.nn.Parameter(torch.zeros(4))  # b1, b2, a, c
        self.pair = None
        if hidden:
            self.pair = torch.nn.Sequential(
                torch.nn.Linear(2 * width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1)
            )
            torch.nn.init.zeros_(self.pair[2].weight)  # starts as the linear model
            torch.nn.init.zeros_(self.pair[2].bias)

    @staticmethod
    def pair_terms(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[N, N, 3]: log(1 - cos h), log(1 - cos k), log(s_i s_j / (s_i + s_j)); x, keys [N, d], size [N]."""

        def log_distance(features):
            unit = F.normalize(features, dim=-1)
            return torch.log((1 - unit @ unit.T).clamp_min(1e-4))

        harmonic = torch.log(size[:, None] * size[None] / (size[:, None] + size[None]))
        return torch.stack([log_distance(x), log_distance(keys), harmonic], dim=-1)

    @staticmethod
    def pair_input(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.cat([first * second, (first - second).abs()], dim=-1)

    def forward(self, first: torch.Tensor, second: torch.Tensor, terms: torch.Tensor, pair_input=None) -> torch.Tensor:
        """log cost [P] of P pairs: hidden states first, second [P, d], terms [P, 3]."""
        out = (first + second) @ self.weight + terms @ self.coefficients[:3] + self.coefficients[3]
        if self.pair is not None:
            out = out + self.pair(self.pair_input(first, second) if pair_input is None else pair_input)[:, 0]
        return out

    def matrix(self, x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[N, N] log cost of every pair; x, keys [N, d], size [N]."""
        tokens = x.shape[0]
        first, second = (index.flatten() for index in torch.meshgrid(*[torch.arange(tokens)] * 2, indexing="ij"))
        terms = self.pair_terms(x, size, keys)[first, second]
        return self(x[first], x[second], terms).view(tokens, tokens)


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


def fit(records: list[dict], blocks: int, hidden: int, steps: int) -> list[CostModel]:
    """Least squares on log measured cost, every pair of a record weighted 1 / its record's pairs."""
    models = []
    for block in range(blocks):
        columns = []
        for r in (r for r in records if r["block"] == block):
            first, second = torch.triu(~r["cost"].isnan(), 1).nonzero(as_tuple=True)
            weight = torch.full((len(first),), 1.0 / len(first))
            terms = CostModel.pair_terms(r["x"], r["size"], r["keys"])[first, second]
            target = r["cost"][first, second].clamp_min(1e-7).log()
            columns.append((r["x"][first], r["x"][second], terms, target, weight))
        model = CostModel(records[0]["x"].shape[-1], hidden)
        if columns:
            # clone(): the records were made under inference mode, whose tensors autograd cannot save
            first, second, terms, target, weight = (torch.cat(c).clone() for c in zip(*columns, strict=True))
            pair_input = CostModel.pair_input(first, second) if hidden else None
            groups = [{"params": [model.weight, model.coefficients], "lr": 1e-2, "weight_decay": 0.0}]
            if hidden:
                groups.append({"params": model.pair.parameters(), "lr": PAIR_LR, "weight_decay": PAIR_WEIGHT_DECAY})
            optimizer = torch.optim.AdamW(groups)
            for _ in range(steps):
                optimizer.zero_grad()
                loss = ((model(first, second, terms, pair_input) - target).pow(2) * weight).sum() / weight.sum()
                (loss + WEIGHT_DECAY * model.weight.pow(2).sum()).backward()
                optimizer.step()
            print(f"block {block}: {len(columns)} records, {len(target)} pairs, fit loss {loss.item():.3f}", flush=True)
        models.append(model.requires_grad_(False))
    return models


def run(args) -> dict:
    loaded = load_model("zoo:minilm-l6")
    tokenizer, original = loaded.processor, loaded.model
    model = copy.deepcopy(original)
    apply_passes(model, [{"type": "tome", "target_flops": CUT}], sequence_length=REFERENCE_LENGTH)
    blocks, embeddings = token_blocks(model), model.embeddings

    fit_texts = []
    for (data, (low, high)), count in zip(CALIBRATION, args.calibration, strict=True):
        texts = [sample.value for sample in load_samples(data, "text")]
        fit_texts += [t for t in texts if low <= len(tokenizer(t)["input_ids"]) <= high][:count]
    with torch.inference_mode():
        records = collect(blocks, embeddings, original, tokenizer, fit_texts)
    linear = fit(records, len(blocks), 0, LINEAR_STEPS)
    pair = fit(records, len(blocks), PAIR_HIDDEN, PAIR_STEPS)

    def learned(models):
        return lambda index, x, size, keys: models[index].matrix(x[0], size[0], keys[0])

    def norm_preserving(x, size, cost, removal):
        return greedy_merge(x, size, cost, removal, preserve_norm=True)

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
                    "greedy_learned": run_with(blocks, embeddings, ids, learned(linear), greedy_merge),
                    "greedy_pair": run_with(blocks, embeddings, ids, learned(pair), greedy_merge),
                    "greedy_pair_norm": run_with(blocks, embeddings, ids, learned(pair), norm_preserving),
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
            "sets": [
                {"data": data, "tokens": list(tokens), "sentences": count}
                for (data, tokens), count in zip(CALIBRATION, args.calibration, strict=True)
            ],
            "sentences": len(fit_texts),
            "block_records": len(records),
            "linear": {"weight_decay": WEIGHT_DECAY, "steps": LINEAR_STEPS},
            "pair_mlp": {
                "hidden": PAIR_HIDDEN,
                "steps": PAIR_STEPS,
                "learning_rate": PAIR_LR,
                "weight_decay": PAIR_WEIGHT_DECAY,
            },
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
            f"Held-out: {result['data']}, one sentence at a time. Learned costs fitted on "
            f"{calibration['sentences']} calibration sentences ("
            + ", ".join(
                f"{c['sentences']} of {c['data']}, {c['tokens'][0]}-{c['tokens'][1]}" for c in calibration["sets"]
            )
            + f"; {calibration['block_records']} block records). Measured costs see the original's output: "
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
        "--calibration",
        type=int,
        nargs=len(CALIBRATION),
        default=[167, 498, 100],
        help="sentences of each calibration set: " + ", ".join(f"{d} {lo}-{hi} tokens" for d, (lo, hi) in CALIBRATION),
    )
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    write_results(ROOT / "benchmarks" / "results", "merge_cost_model", result, markdown(result))


if __name__ == "__main__":
    main()
