"""Time to first token, decoding speed, KV-cache bytes and peak prefill memory: original vs a tokcomp pass.

    python benchmarks/decoder_prefill_speed.py [--model zoo:gemma-3-270m] [--lengths 2048,4096,8192]
        [--pass '{"type": "fastv", "keep": 0.25, "layer": 2, "sink": 4, "question": 32}'] [--repeats 5]
        [--new-tokens 32] [--device cpu]

Prompts: held-out prose (zoo:prose, evaluation split) of at most each length in the model's tokenizer.
Per length the two models take turns, repeat after repeat (one warm-up turn each first), and the
medians are reported (evaluation/decoder.py `interleaved_costs`): time to first token = the prompt's
prefill and the first token's argmax; decoding speed = `new_tokens` greedy steps through the cache;
KV-cache bytes = every key and value tensor of the DynamicCache after prefill; peak prefill memory =
on CUDA torch's peak allocation over the prefill, on CPU the peak resident set size over it minus the
resident size at its start (1 ms sampling, freed heap handed back first). The machine's load average
is recorded before and after each length. Writes benchmarks/results/decoder_prefill_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PASS = {"type": "fastv", "keep": 0.25, "layer": 2, "sink": 4, "question": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:gemma-3-270m")
    parser.add_argument("--lengths", default="2048,4096,8192")
    parser.add_argument("--pass", dest="spec", default=json.dumps(DEFAULT_PASS), help="one tokcomp pass spec (JSON)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a line for the table header (e.g. reduced sizes)")
    parser.add_argument("--output", default=str(RESULTS / "decoder_prefill_speed"), help="path without suffix")
    args = parser.parse_args()

    import torch
    import transformers

    from benchmarks.common import machine, write_results
    from tokcomp.evaluation import decoder
    from tokcomp.pipeline import apply_passes
    from tokcomp.zoo import pull

    started = time.perf_counter()
    folder = str(pull(args.model)) if args.model.startswith("zoo:") else args.model
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    device = torch.device(args.device)
    original = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().to(device)
    spec = json.loads(args.spec)
    compressed = copy.deepcopy(original)
    apply_passes(compressed, [spec], sequence_length=1024)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        text = decoder.prose_prompts(tokenizer, length, 1, args.seed)[0]
        ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
        before = machine()
        costs = decoder.interleaved_costs(
            {"original": original, "compressed": compressed}, ids, args.repeats, args.new_tokens
        )
        rows.append({"length": length, "tokens": int(ids.shape[1]), **costs, "machine_before": before,
                     "machine_after": machine()})  # fmt: skip
        print(f"{length}: {json.dumps({k: v['ttft_s'] for k, v in costs.items()})}", flush=True)
    result = {
        "model": args.model, "pass": spec, "repeats": args.repeats, "new_tokens": args.new_tokens,
        "device": str(device), "note": args.note,
        "peak_memory_measure": decoder.peak_memory(lambda: None, device)[2],
        "rows": rows, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    output = Path(args.output)
    write_results(output.parent, output.stem, result, to_markdown(result))


def to_markdown(result: dict) -> str:
    spec = ", ".join(f"{k} {v}" for k, v in result["pass"].items() if k != "type")
    first = result["rows"][0]["machine_before"]
    lines = [
        f"# Time to first token and KV cache: {result['model']}, original vs {result['pass']['type']} ({spec})",
        "",
        (
            f"Device {result['device']} ({first['cpu']}, {first['threads']} threads). Medians of {result['repeats']} "
            f"interleaved repeats; decoding speed over {result['new_tokens']} greedy tokens; peak memory: "
            f"{result['peak_memory_measure']}. Prompts: held-out prose (zoo:prose)."
        ),
    ]
    if result["note"]:
        lines += ["", f"**{result['note']}**"]
    header = ["prompt tokens", "model", "TTFT (s)", "TTFT ratio", "decode tok/s", "KV cache MiB", "peak prefill MiB",
              "load avg before / after"]  # fmt: skip
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        base = row["original"]["ttft_s"]
        load = f"{row['machine_before']['load_average']} / {row['machine_after']['load_average']}"
        for name in ("original", "compressed"):
            c = row[name]
            peak = "-" if c["peak_prefill_bytes"] is None else f"{c['peak_prefill_bytes'] / 2**20:.1f}"
            lines.append(
                f"| {row['tokens']} | {name} | {c['ttft_s']:.3f} | {c['ttft_s'] / base:.2f} | "
                f"{c['decode_tokens_per_s']:.1f} | {c['kv_cache_bytes'] / 2**20:.2f} | {peak} | {load} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
