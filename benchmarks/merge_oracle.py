"""How far ToMe's merge choice is from the best one at the same counts, on short sentences.

    python benchmarks/merge_oracle.py [--sentences 64] [--bucket 8-16] [--threads 2]

MiniLM-L6 with ToMe at -35% FLOPs (set at 128 tokens, applied as a rate) loses the most on short
sentences (benchmarks/results/dynamic_padding.md). This asks whether that is the budget or the
choice of which tokens merge. For each held-out sentence of the bucket (the same sentences as
dynamic_padding.py, run one at a time) the model runs block by block with ToMe's own counts; at each
block a greedy oracle merges, one pair at a time, the pair (any token into any other, CLS excepted)
whose merge gives the highest final cosine, the later blocks running plain ToMe. Fidelity: cosine of
the size-weighted mean-pooled output to the original model's mean-pooled output. The oracle sees the
original's output, so it is a bound for analysis, never a reducer. No timing.
Writes benchmarks/results/merge_oracle.{json,md}.
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
from benchmarks.dynamic_padding import CUT, REFERENCE_LENGTH, buckets  # noqa: E402
from tokcomp.pipeline import apply_passes  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.surgery import token_blocks  # noqa: E402
from tokcomp.surgery.state import TokenState  # noqa: E402


def state_of(size: torch.Tensor) -> TokenState:
    """One unpadded sentence: sizes as given, the CLS token protected."""
    tokens = size.shape[1]
    positions = torch.arange(tokens)[None]
    return TokenState(size=size, real=None, protected=positions < 1, position=positions)


def apply_merges(x: torch.Tensor, size: torch.Tensor, merges, order: list[int], preserve_norm: bool = False):
    """Each (source, target) merged size-weighted; the output keeps `order` (sources absent).

    With `preserve_norm` a merged token is rescaled to the size-weighted mean of its parts' norms:
    a mean of two directions is shorter than either, which the next layers read as a different token.
    """
    x, size, norm = x.clone(), size.clone(), x.norm(dim=-1)
    for source, target in merges:
        total = size[0, source] + size[0, target]
        x[0, target] = (x[0, source] * size[0, source] + x[0, target] * size[0, target]) / total
        norm[0, target] = (norm[0, source] * size[0, source] + norm[0, target] * size[0, target]) / total
        size[0, target] = total
    if preserve_norm:
        x = x * (norm / x.norm(dim=-1))[..., None]
    return x[:, order], size[:, order]


def merge_pair(x: torch.Tensor, size: torch.Tensor, source: int, target: int):
    """Token `source` merged whole into `target` (size-weighted), then removed."""
    return apply_merges(x, size, [(source, target)], [i for i in range(x.shape[1]) if i != source])


def pooled(x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    return (x * size[..., None]).sum(1) / size.sum()


def finish(blocks, start: int, x: torch.Tensor, size: torch.Tensor, after_attention: bool) -> torch.Tensor:
    """Run blocks[start:] with ToMe; with `after_attention`, x has passed block `start`'s attention and merges."""
    for index in range(start, len(blocks)):
        block = blocks[index]
        if not (after_attention and index == start):
            x, info = block.attention_residual(x, torch.log(size)[:, None, None, :])
            x, state = block.reducer(x, state_of(size), info)
            size = state.size
        x = block.mlp_residual(x)
    return pooled(x, size)


def oracle_cosine(blocks, embeddings, ids: torch.Tensor, reference: torch.Tensor) -> float:
    x, size = embeddings(input_ids=ids), torch.ones(1, ids.shape[1])
    for index, block in enumerate(blocks):
        x, _ = block.attention_residual(x, torch.log(size)[:, None, None, :])
        for _ in range(block.reducer.removal(x.shape[1] - 1)):
            best = None
            for source in range(1, x.shape[1]):
                for target in range(1, x.shape[1]):
                    if source == target:
                        continue
                    merged = merge_pair(x, size, source, target)
                    score = F.cosine_similarity(reference, finish(blocks, index, *merged, after_attention=True)).item()
                    if best is None or score > best[0]:
                        best = (score, source, target)
            x, size = merge_pair(x, size, best[1], best[2])
        x = block.mlp_residual(x)
    return F.cosine_similarity(reference, pooled(x, size)).item()


def run(args) -> dict:
    loaded = load_model("zoo:minilm-l6")
    tokenizer, original = loaded.processor, loaded.model
    sentences = buckets(tokenizer, 64)[args.bucket][: args.sentences]
    model = copy.deepcopy(original)
    apply_passes(model, [{"type": "tome", "target_flops": CUT}], sequence_length=REFERENCE_LENGTH)
    blocks, embeddings = token_blocks(model), model.embeddings
    tome, oracle, lengths = [], [], []
    for number, text in enumerate(sentences, start=1):
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        reference = original(input_ids=ids).last_hidden_state.mean(1)
        x = embeddings(input_ids=ids)
        tome.append(F.cosine_similarity(reference, finish(blocks, 0, x, torch.ones(1, ids.shape[1]), False)).item())
        oracle.append(oracle_cosine(blocks, embeddings, ids, reference))
        lengths.append(int(ids.shape[1]))
        print(
            f"{number}/{len(sentences)}: {lengths[-1]} tokens, ToMe {tome[-1]:.4f}, oracle {oracle[-1]:.4f}", flush=True
        )
    gain = [o - t for o, t in zip(oracle, tome, strict=True)]
    return {
        "model": "zoo:minilm-l6",
        "pass": {"type": "tome", "target_flops": CUT, "reference_tokens": REFERENCE_LENGTH},
        "data": "held-out English prose (tokcomp.zoo.samples.english_prose), as benchmarks/dynamic_padding.py",
        "bucket": args.bucket,
        "tokens": lengths,
        "tome_cosine": bootstrap_mean(torch.tensor(tome)),
        "oracle_cosine": bootstrap_mean(torch.tensor(oracle)),
        "oracle_gain": bootstrap_mean(torch.tensor(gain)),
        "oracle_at_least_0_95": sum(o >= 0.95 for o in oracle),
        "per_sentence": {"tome": tome, "oracle": oracle},
        "machine": {**machine(), "load_average": load_average()},
    }


def markdown(result: dict) -> str:
    def cell(stats: dict) -> str:
        low, high = stats["ci95"]
        return f"{stats['mean']:.4f} ({low:.4f}-{high:.4f}), min {stats['min']:.3f}"

    n = len(result["tokens"])
    return "\n".join(
        [
            "# ToMe's merge choice against a greedy oracle at the same counts (MiniLM-L6, short sentences)",
            "",
            (
                f"{n} held-out sentences of {min(result['tokens'])}-{max(result['tokens'])} tokens "
                f"({result['data']}), one at a time; ToMe at {result['pass']['target_flops']} FLOPs set at "
                f"{result['pass']['reference_tokens']} tokens. The oracle merges, one pair at a time and with "
                "ToMe's counts per block, the pair whose merge gives the highest final cosine (later blocks plain "
                "ToMe): an analysis bound that sees the original's output, never a reducer. Cosine of the "
                "size-weighted mean-pooled output to the original's (mean, 95% bootstrap interval, minimum)."
            ),
            "",
            "| merge choice | cosine |",
            "|---|---|",
            f"| ToMe (bipartite, hidden states) | {cell(result['tome_cosine'])} |",
            f"| greedy oracle | {cell(result['oracle_cosine'])} |",
            f"| oracle minus ToMe, per sentence | {cell(result['oracle_gain'])} |",
            "",
            f"Sentences at or above 0.95: oracle {result['oracle_at_least_0_95']} of {n}.",
            "",
            no_timing_line(result["machine"]),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--bucket", default="8-16", choices=["8-16", "17-32", "33-64"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    write_results(ROOT / "benchmarks" / "results", "merge_oracle", result, markdown(result))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
