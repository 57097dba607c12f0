"""Where a compressed MiniLM's eager CPU time goes, block part by block part.

    python benchmarks/block_time.py [--sentences 512] [--repeats 5]

zoo:minilm-l6 with ToMe at -35% FLOPs (reference 128 tokens) and the same model rewritten at
r = 0 (every block the compressed model has, no token removed: the original's speed, which the
bare original's total beside it checks) run the held-out sentences of
benchmarks/sentence_encode.py, tokenised once, sorted by length, in padded batches of 32
(at most 256 tokens, as sentence-transformers runs MiniLM). Each block's parts are timed with
wall-clock wrappers: entering (receiving the token state), the attention residual, the reducer,
the MLP residual and leaving (handing the state on: attached to the tensor, eager on CPU). Totals
per run of the corpus, median over `repeats` runs, models alternating. Blocks without their reducer is the compressed blocks' time less the
reducer's: what the blocks would take if choosing and merging tokens were free.

Writes benchmarks/results/block_time.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tokcomp  # noqa: E402
from benchmarks.common import load_average, machine, write_results  # noqa: E402
from benchmarks.sentence_encode import BATCH, CUT, corpus_flops_ratio, held_out  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.surgery import token_blocks  # noqa: E402

MAX_LENGTH = 256
PARTS = ("_enter", "attention_residual", "reducer", "mlp_residual", "_leave")


def timed_parts(model) -> dict[str, float]:
    """Wrap every block's parts so each call adds its wall-clock seconds to the returned dict."""
    totals: dict[str, float] = defaultdict(float)

    def wrap(owner, attribute: str, part: str) -> None:
        call = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = call(*args, **kwargs)
            totals[part] += time.perf_counter() - start
            return out

        setattr(owner, attribute, timed)

    for block in token_blocks(model):
        for part in PARTS:
            if part == "reducer":
                if block.reducer is not None:
                    wrap(block.reducer, "forward", part)
            else:
                wrap(block, part, part)
        wrap(block, "forward", "blocks")
    return totals


def run(args) -> dict:
    torch.set_num_threads(2)
    loaded = load_model("zoo:minilm-l6")
    original = loaded.model.eval()
    compressed = tokcomp.apply(copy.deepcopy(original), [{"type": "tome", "target_flops": CUT}], sequence_length=128)
    unreduced = tokcomp.apply(copy.deepcopy(original), [{"type": "tome", "r": 0}], sequence_length=128)
    texts = held_out(args.sentences)
    lengths = [min(len(loaded.processor(t)["input_ids"]), MAX_LENGTH) for t in texts]
    texts = [t for _, t in sorted(zip(lengths, texts, strict=True), key=lambda pair: pair[0])]
    batches = [
        dict(
            loaded.processor(
                texts[i : i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
        )
        for i in range(0, len(texts), BATCH)
    ]
    models = {"original": original, "r = 0": unreduced, "ToMe -35%": compressed}
    parts = {name: timed_parts(model) for name, model in models.items() if name != "original"}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    load_before = load_average()
    with torch.inference_mode():
        for model in models.values():  # warm-up
            for batch in batches:
                model(**batch)
        for _ in range(args.repeats):
            for name, model in models.items():
                if name in parts:
                    parts[name].clear()
                start = time.perf_counter()
                for batch in batches:
                    model(**batch)
                runs[name].append({"total": time.perf_counter() - start, **parts.get(name, {})})
    load_after = load_average()
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    for row in medians.values():
        if "blocks" in row:
            row["blocks without the reducer"] = row["blocks"] - row.get("reducer", 0.0)
    return {
        "model": "zoo:minilm-l6",
        "pass": {"type": "tome", "target_flops": CUT, "reference_tokens": 128},
        "data": {"source": "benchmarks/sentence_encode.py held_out()", "sentences": len(texts), "batch": BATCH},
        "flops_speedup": 1 / corpus_flops_ratio(compressed, loaded.processor, texts, MAX_LENGTH),
        "repeats": args.repeats,
        "seconds": medians,
        "machine": {**machine(), "load_before": load_before, "load_after": load_after},
    }


def markdown(result: dict) -> str:
    seconds = result["seconds"]
    base, reduced = seconds["r = 0"], seconds["ToMe -35%"]
    keys = ("total", "blocks", *PARTS, "blocks without the reducer")
    lines = [
        "# Where a compressed MiniLM's eager CPU time goes (ToMe -35%, dynamic padding)",
        "",
        (
            f"Data: {result['data']['sentences']} held-out sentences of benchmarks/sentence_encode.py, sorted by "
            f"length, batches of {result['data']['batch']}, at most {MAX_LENGTH} tokens. Seconds per run of the "
            f"corpus, median of {result['repeats']} alternating runs; r = 0 is every rewritten block with no token "
            f"removed. The original's bare forward took {seconds['original']['total']:.3f} s."
        ),
        "",
        "| part | r = 0 (s) | ToMe -35% (s) | ratio |",
        "|---|---|---|---|",
    ]
    for key in keys:  # r = 0 has no reducer: its cells are empty
        b, r = base.get(key), reduced[key]
        unreduced, ratio = (f"{b:.3f}", f"{b / r:.2f}x") if b is not None else ("-", "-")
        lines.append(f"| {key.strip('_')} | {unreduced} | {r:.3f} | {ratio} |")
    share = reduced["reducer"] / reduced["blocks"]
    lines += [
        "",
        (
            f"FLOPs speed-up over the corpus: {result['flops_speedup']:.2f}x. The reducer is {share:.1%} of the "
            "compressed blocks' time."
        ),
        "",
        (
            f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, load average "
            f"{result['machine']['load_before']:.2f} before, {result['machine']['load_after']:.2f} after."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    result = run(parser.parse_args())
    write_results(ROOT / "benchmarks" / "results", "block_time", result, markdown(result))


if __name__ == "__main__":
    main()
