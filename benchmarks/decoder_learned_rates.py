"""Learned per-layer prefill keep rates (`learned_drop`) against FastV and PyramidDrop at the same prefill FLOPs.

    python benchmarks/decoder_learned_rates.py [--cuts 40,55] [--calibration-prompts 8] [--calibration-length 768]
        [--calibration-continuation 16] [--evaluations 16] [--samples 12] [--length 768] [--continuation 32] [--seed 0]

The defaults are the recipe's search (8 prompts, 16 continuation tokens, 16 schedules) at the evaluation
length, so calibration prompts cross the 512-token sliding window as the held-out passages do; about 30
minutes on a shared 2-core CPU.

For every prefill FLOPs cut: `learned_drop` searches its per-layer shares on zoo:prose-calib (calibration
split; the time is recorded), then FastV (after layer 6) and PyramidDrop (stage ends 6, 12, `target_keep`), the
shipped recipes' settings with their pooled ranking (kernel 15), get
the budget that gives the same prefill GMACs as the learned schedule at the evaluation length (bisection
on their keep), and all three are scored on held-out prose (zoo:prose, evaluation split; `samples`
passages of at most `length` tokens): KL(original || compressed) and top-1 agreement over the original's
greedy continuation of `continuation` tokens, teacher-forced. Paired differences per passage, with
percentile-bootstrap 95% intervals (analysis/paired.py). CPU, float32, zoo:gemma-3-270m. Timings here
are noise (a shared 2-core machine; the load is recorded).
Writes benchmarks/results/decoder_learned_rates.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_results  # noqa: E402

SINK, QUESTION = 4, 32
# The shipped recipes' ranking layers: Gemma-3-270m's first full-attention layers (docs/llm_prefill.md).
PYRAMID_LAYERS = [6, 12]
FASTV_LAYER = 6


def load_gemma():
    import torch
    import transformers

    from tokcomp.zoo import pull

    folder = pull("zoo:gemma-3-270m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model


def calibrate(base, tokenizer, cut: float, args) -> tuple[object, dict, float]:
    """(compressed model, pass metadata, wall seconds) of the learned_drop search at this cut."""
    from tokcomp.passes.context import PassContext
    from tokcomp.pipeline import run_passes
    from tokcomp.recipe import parse_pass_list
    from tokcomp.sources import LoadedModel
    from tokcomp.surgery.adapters.base import InputSpec

    spec = InputSpec("text", sequence_length=args.calibration_length)
    model = copy.deepcopy(base)
    loaded = LoadedModel(model, "zoo:gemma-3-270m", "transformers", type(base).__name__, spec, processor=tokenizer)
    passes = parse_pass_list([{
        "type": "learned_drop", "target_flops": f"-{cut:g}%", "prompts": args.calibration_prompts,
        "continuation": args.calibration_continuation, "evaluations": args.evaluations, "sink": SINK,
        "question": QUESTION,
    }])  # fmt: skip
    started = time.perf_counter()
    [record] = run_passes(model, passes, PassContext(spec, args.seed, loaded=loaded))
    return model, record.metadata, round(time.perf_counter() - started, 1)


def evaluation_macs(model, geometry) -> int:
    """Prefill MACs of a compressed model at the evaluation length (its installed reducers)."""
    from tokcomp.passes.learned_drop import prefill_macs

    return prefill_macs(geometry, [block.reducer for block in model.model.layers])


def baseline_at(base, name: str, target_macs: int, geometry, length: int):
    """(model, budget) of FastV / PyramidDrop whose prefill MACs at `length` meet `target_macs` (from below)."""
    from tokcomp.calibrate.share_search import bisect_decreasing
    from tokcomp.passes.fastv import keep_rate
    from tokcomp.passes.learned_drop import prefill_macs
    from tokcomp.passes.pyramid_drop import stage_rates
    from tokcomp.pipeline import apply_passes
    from tokcomp.reducers.attention_drop import LastQueryAttentionDrop

    reducible, layers = length - SINK - QUESTION, geometry.num_layers

    def reducers(keep: float) -> list:
        out = [None] * layers
        if name == "fastv":
            out[FASTV_LAYER - 1] = LastQueryAttentionDrop(keep_rate(keep, reducible), SINK + QUESTION)
        else:
            share = keep ** (1 / len(PYRAMID_LAYERS))
            for layer, rate in zip(PYRAMID_LAYERS, stage_rates(share, len(PYRAMID_LAYERS), reducible), strict=True):
                out[layer - 1] = LastQueryAttentionDrop(rate, SINK + QUESTION)
        return out

    # FLOPs grow with keep: bisect on the dropped share 1 - keep (non-increasing FLOPs).
    dropped = bisect_decreasing(lambda x: prefill_macs(geometry, reducers(1 - x)), target_macs, 0.0, 1.0 - 1e-4)
    keep = 1 - dropped
    spec = {"type": name, "sink": SINK, "question": QUESTION}
    spec |= {"keep": keep, "layer": FASTV_LAYER} if name == "fastv" else {"target_keep": keep, "layers": PYRAMID_LAYERS}
    model = copy.deepcopy(base)
    apply_passes(model, [spec], sequence_length=length)
    return model, keep


def score_row(cut: float, name: str, keep: float | None, macs: int, original_macs: int, scores: list[dict]) -> dict:
    """One method's row: its budget, prefill GMACs and cut at the evaluation length, KL and top-1 per passage."""
    return {
        "cut_target": cut / 100, "target_flops": f"-{cut:g}%", "method": name, "keep": keep,
        "gmacs_at_length": macs / 1e9, "flops_cut": 1 - macs / original_macs,
        "kl": statistics.fmean(r["kl"] for r in scores), "kl_per_prompt": [r["kl"] for r in scores],
        "top1_agreement": statistics.fmean(r["top1_agreement"] for r in scores),
        "top1_per_prompt": [r["top1_agreement"] for r in scores],
    }  # fmt: skip


def paired(a: list[dict], b: list[dict]) -> dict:
    """Learned (A) against a baseline (B): KL as -KL (higher is better), top-1 as is."""
    from tokcomp.analysis.paired import compare_paired

    kl = compare_paired([-r["kl"] for r in a], [-r["kl"] for r in b])
    top1 = compare_paired([r["top1_agreement"] for r in a], [r["top1_agreement"] for r in b])
    return {"neg_kl": kl.as_dict(), "top1": top1.as_dict(), "kl_summary": kl.summary("learned", "baseline"),
            "top1_summary": top1.summary("learned", "baseline")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", default="40,55", help="prefill FLOPs cuts in percent")
    parser.add_argument("--calibration-prompts", type=int, default=8)
    parser.add_argument("--calibration-length", type=int, default=768)
    parser.add_argument("--calibration-continuation", type=int, default=16)
    parser.add_argument("--evaluations", type=int, default=16, help="schedules the search scores per cut")
    parser.add_argument("--samples", type=int, default=12, help="held-out prose passages")
    parser.add_argument("--length", type=int, default=768, help="held-out passage tokens (at most)")
    parser.add_argument("--continuation", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    import torch

    from tokcomp.calibrate.prefill import ContinuationFidelity
    from tokcomp.evaluation.decoder import prose_prompts
    from tokcomp.passes.learned_drop import prefill_macs
    from tokcomp.passes.token_reduction import geometry_of
    from tokcomp.surgery.adapters.base import InputSpec

    torch.manual_seed(args.seed)
    machine_before = machine()
    started = time.perf_counter()
    tokenizer, base = load_gemma()
    texts = prose_prompts(tokenizer, args.length, args.samples, args.seed)  # zoo:prose, evaluation split
    prompts = [tokenizer(text, return_tensors="pt").input_ids for text in texts]
    print(f"held-out prompts: {[int(p.shape[1]) for p in prompts]} tokens; original continuations ...", flush=True)
    fidelity = ContinuationFidelity(base, prompts, args.continuation)
    rows, comparisons = [], []
    for cut in [float(c) for c in args.cuts.split(",")]:
        print(f"--- cut -{cut:g}%: calibrating learned_drop", flush=True)
        learned, metadata, seconds = calibrate(base, tokenizer, cut, args)
        models = {"learned_drop": (learned, None)}
        # Geometry at the evaluation length (rewritten blocks hold the same projections as the original).
        geometry = geometry_of(learned, InputSpec("text", sequence_length=args.length))
        target = evaluation_macs(learned, geometry)
        original = prefill_macs(geometry, [None] * geometry.num_layers)
        for name in ("fastv", "pyramid_drop"):
            models[name] = baseline_at(base, name, target, geometry, args.length)
        scores = {}
        for name, (model, keep) in models.items():
            print(f"    scoring {name} on {len(prompts)} held-out passages", flush=True)
            scores[name] = fidelity.scores(model)
            rows.append(score_row(cut, name, keep, evaluation_macs(model, geometry), original, scores[name]))
            if name == "learned_drop":
                rows[-1] |= {"shares": metadata["keep"], "calibration": metadata["report"] | {"wall_seconds": seconds}}
            print(f"    {name}: {rows[-1]['gmacs_at_length']:.2f} GMACs, KL {rows[-1]['kl']:.4f}, "
                  f"top-1 {rows[-1]['top1_agreement']:.3f}")  # fmt: skip
        for name in ("fastv", "pyramid_drop"):
            comparison = paired(scores["learned_drop"], scores[name])
            comparisons.append({"cut_target": cut / 100, "baseline": name, **comparison})
        del models, learned
    result = {
        "model": "zoo:gemma-3-270m",
        "evaluation": {"data": "zoo:prose (evaluation split)", "samples": len(prompts),
                       "prompt_tokens": [int(p.shape[1]) for p in prompts], "continuation": args.continuation},
        "settings": vars(args),
        "baselines": {"fastv_layer": FASTV_LAYER, "pyramid_layers": PYRAMID_LAYERS, "ranking": default_ranking()},
        "rows": rows,
        "paired": comparisons,
        "machine_before": machine_before,
        "machine_after": machine(),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    write_results(args.output, "decoder_learned_rates", result, markdown(result))


def default_ranking() -> str:
    """The ranking every compared pass uses: the passes' default pooling of the last token's attention."""
    from tokcomp.passes.fastv import LastTokenRanking

    fields = LastTokenRanking.model_fields
    return f"kernel {fields['kernel'].default}, {fields['pooling'].default} pooling"


def _allowed_layers(result: dict) -> str:
    allowed = {tuple(r["calibration"].get("drop_layers_allowed", [])) for r in result["rows"] if "calibration" in r}
    return " / ".join(", ".join(map(str, layers)) for layers in sorted(allowed)) or "?"


def markdown(result: dict) -> str:
    ev = result["evaluation"]
    lines = [
        "# Learned prefill keep rates vs FastV / PyramidDrop at the same prefill FLOPs (gemma-3-270m)",
        "",
        f"Held-out: {ev['samples']} passages of {ev['data']} ({min(ev['prompt_tokens'])}-{max(ev['prompt_tokens'])} "
        f"tokens), the original's greedy continuation of {ev['continuation']} tokens teacher-forced. GMACs: prefill "
        f"at {result['settings']['length']} tokens. Calibration: {result['settings']['calibration_prompts']} passages "
        f"of zoo:prose-calib (disjoint) of at most {result['settings']['calibration_length']} tokens, "
        f"{result['settings']['calibration_continuation']} teacher-forced tokens each, "
        f"{result['settings']['evaluations']} schedules per cut; drops may follow layers "
        f"{_allowed_layers(result)} (search_layers: full_attention).",
        "",
        f"FastV ranks after layer {result['baselines']['fastv_layer']}, PyramidDrop at stage ends "
        f"{result['baselines']['pyramid_layers']} (the shipped recipes); every pass ranks by the last token's "
        f"attention with {result['baselines']['ranking']} (the passes' default).",
        "",
        "| target cut | method | budget | prefill GMACs | cut | KL (nats) | top-1 agreement | calibration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        budget = "learned shares" if r["keep"] is None else f"keep {r['keep']:.3f}"
        calibration = "-"
        if "calibration" in r:
            c = r["calibration"]
            calibration = (f"{c['wall_seconds']:.0f} s, {len(c['candidates'])} schedules, cut at "
                           f"{result['settings']['calibration_length']} tok {c['achieved_cut']:.1%}")  # fmt: skip
        lines.append(
            f"| -{r['cut_target']:.0%} | {r['method']} | {budget} | {r['gmacs_at_length']:.2f} | "
            f"{r['flops_cut']:.1%} | {r['kl']:.4f} | {r['top1_agreement']:.3f} | {calibration} |"
        )
    lines += ["", "Paired, learned_drop minus baseline per passage (95% bootstrap interval; KL as -KL: + is better):"]
    lines += [""]
    lines += ["| target cut | baseline | -KL difference | top-1 difference |", "|---|---|---|---|"]
    for c in result["paired"]:
        lines.append(f"| -{c['cut_target']:.0%} | {c['baseline']} | {c['kl_summary']} | {c['top1_summary']} |")
    learned = [r for r in result["rows"] if r["method"] == "learned_drop"]
    lines += ["", "Learned shares of the reducible span kept after each layer:", ""]
    for r in learned:
        lines.append(f"- -{r['cut_target']:.0%}: " + " ".join(f"{s:.2f}" for s in r["shares"]))
    lines += ["", f"Machine load before / after: {result['machine_before']['load_average']} / "
              f"{result['machine_after']['load_average']} (shared 2-core CPU: times are noise). "
              f"Total {result['seconds']:.0f} s.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
