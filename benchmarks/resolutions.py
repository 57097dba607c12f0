"""One vision checkpoint at every resolution: the quickstart recipe fed 160 to 518 px images.

    python benchmarks/resolutions.py [--sizes 160 224 336 518] [--samples 36]

recipes/quickstart.yaml (zoo:dinov2-small, ToMe at -38% FLOPs resolved at 224 px) is
compressed once; then, for each size, the zoo:images photos (20 ImageNet + 16 scikit-image
photos; ToMe has no calibration, so none of them tuned anything) are preprocessed at that
size with the checkpoint's own processor, and the compressed model is compared with the
original at that size:
- FLOPs cut at that size (MACs of the compressed model's token counts / the original's);
- CLS cosine to the original (mean, 95% bootstrap interval, minimum), and random token
  dropping at the same counts as the simple baseline;
- tokens after the last block.

Writes benchmarks/results/resolutions.{md,json}.
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
from tokcomp.data import load_samples, make_batches  # noqa: E402
from tokcomp.passes.context import PassContext  # noqa: E402
from tokcomp.pipeline import run_passes  # noqa: E402
from tokcomp.recipe import load_recipe  # noqa: E402
from tokcomp.reducers.schedule import tokens_after_layers  # noqa: E402
from tokcomp.sources import fit_processor, load_model  # noqa: E402
from tokcomp.surgery import find_adapter, token_blocks  # noqa: E402
from tokcomp.surgery.adapters.base import InputSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def cosines(original, model, batches) -> torch.Tensor:
    return torch.cat(
        [
            F.cosine_similarity(model_outputs(original, b, "cls")["embedding"], model_outputs(model, b, "cls")["embedding"])
            for b in batches
        ]
    )


def run(args) -> dict:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    loaded = load_model(recipe.model)
    original = loaded.model
    compressed = copy.deepcopy(original)
    (record,) = run_passes(compressed, recipe.passes, PassContext(loaded.input_spec, recipe.seed))
    meta = record.metadata
    reducers = [block.reducer for block in token_blocks(compressed)]
    baseline = random_drop_like(original, meta["input_tokens"], meta["tokens_per_layer"], seed=0)
    samples = load_samples("zoo:images", "image", args.samples)
    adapter = find_adapter(original)
    rows = []
    for size in args.sizes:
        geometry = adapter.geometry(original, InputSpec("image", image_size=size))
        tokens = tokens_after_layers(geometry.input_tokens, reducers)
        dense = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
        processor = copy.deepcopy(loaded.processor)
        fit_processor(processor, size)
        batches = list(make_batches(samples, processor, "image", args.batch))
        ours = cosines(original, compressed, batches)
        rows.append(
            {
                "image_size": size,
                "input_tokens": geometry.input_tokens,
                "final_tokens": tokens[-1],
                "flops_cut": 1 - model_macs(geometry, tokens) / dense,
                "original_gmacs": dense / 1e9,
                "cosine": bootstrap_mean(ours),
                "random_drop": bootstrap_mean(cosines(original, baseline, batches)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "recipe": "recipes/quickstart.yaml",
        "reference_image_size": loaded.input_spec.image_size,
        "target": "-38%",
        "data": f"zoo:images ({len(samples)} photos: ImageNet samples and scikit-image photos)",
        "machine": {**machine(), "load_average": load_average()},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    reference = next(r for r in result["rows"] if r["image_size"] == result["reference_image_size"])
    lines = [
        f"# The quickstart checkpoint at every resolution (ToMe {result['target']} resolved at "
        f"{result['reference_image_size']} px)",
        "",
        f"Data: {result['data']}, preprocessed at each size by the checkpoint's own processor. Fidelity: CLS "
        "cosine to the original model at the same size (mean, 95% bootstrap interval, minimum).",
        "",
        "| size | tokens in -> out | FLOPs cut | cosine | vs reference size | random drop |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        c = row["cosine"]
        lines.append(
            f"| {row['image_size']} px | {row['input_tokens']} -> {row['final_tokens']} | {100 * row['flops_cut']:.1f}% "
            f"| {c['mean']:.4f} ({c['ci95'][0]:.4f}-{c['ci95'][1]:.4f}), min {c['min']:.3f} "
            f"| {c['mean'] - reference['cosine']['mean']:+.4f} | {row['random_drop']['mean']:.4f} |"
        )
    lines += [
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, load average "
        f"{result['machine']['load_average']} (no timings in this table).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224, 336, 518])
    parser.add_argument("--samples", type=int, default=36)
    parser.add_argument("--batch", type=int, default=6)
    args = parser.parse_args()
    result = run(args)
    write_results(RESULTS, "resolutions", result, markdown(result))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
