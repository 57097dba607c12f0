"""Time to first token, decoding speed, KV-cache bytes and peak prefill memory: original vs tokcomp passes.

    python benchmarks/decoder_prefill_speed.py [--model zoo:gemma-3-270m] [--lengths 2048,4096,8192]
        [--pass '{"type": "fastv", "keep": 0.25, "layer": 6, "sink": 4, "question": 32}' [--pass ...]]
        [--repeats 5] [--new-tokens 32] [--device cpu] [--dtype float32]
    python benchmarks/decoder_prefill_speed.py --model random:gemma-3-1b --device cuda --dtype bfloat16

Prompts: held-out prose (zoo:prose, evaluation split) of at most each length in the model's tokenizer.
`--model random:<architecture>` builds one of ARCHITECTURES with random weights and feeds random token
ids instead: the speed of a shape does not depend on its weights, and the GPU machine has no network
and no room to carry real weights. Per length the models take turns, repeat after repeat (one warm-up
turn each first), and the medians are reported (evaluation/decoder.py `interleaved_costs`): time to
first token = the prompt's prefill and the first token's argmax; decoding speed = `new_tokens` greedy
steps through the cache; KV-cache bytes = every key and value tensor of the DynamicCache after prefill;
peak prefill memory = on CUDA torch's peak allocation over the prefill, on CPU the peak resident set
size over it minus the resident size at its start (1 ms sampling, freed heap handed back first). The
machine's load average is recorded before and after each length. Writes
benchmarks/results/decoder_prefill_speed.{json,md} (or --output).
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
DEFAULT_PASS = {"type": "fastv", "keep": 0.25, "layer": 6, "sink": 4, "question": 32}

# Gemma-3 text architectures (the published configs' shapes) for `--model random:<name>`.
_GEMMA3_COMMON = {
    "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144, "head_dim": 256,
    "query_pre_attn_scalar": 256, "sliding_window": 512, "max_position_embeddings": 32768,
    "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    "rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                        "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
}  # fmt: skip
ARCHITECTURES = {
    "gemma-3-270m": {**_GEMMA3_COMMON, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                     "num_attention_heads": 4, "num_key_value_heads": 1},
    "gemma-3-1b": {**_GEMMA3_COMMON, "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
                   "num_attention_heads": 4, "num_key_value_heads": 1},
}  # fmt: skip


def random_model(name: str, dtype):
    """A causal LM of ARCHITECTURES[name] with random weights (every sixth layer full attention, as Gemma 3)."""
    import torch
    import transformers

    if name not in ARCHITECTURES:
        raise SystemExit(f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    fields = dict(ARCHITECTURES[name])
    layers = fields["num_hidden_layers"]
    fields["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    config = transformers.AutoConfig.for_model(**fields)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)


def pass_label(spec: dict) -> str:
    return spec["type"] + " (" + ", ".join(f"{k} {v}" for k, v in spec.items() if k != "type") + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:gemma-3-270m", help="zoo:NAME, a folder, or random:ARCHITECTURE")
    parser.add_argument("--lengths", default="2048,4096,8192")
    parser.add_argument("--pass", dest="specs", action="append", help="a tokcomp pass spec (JSON); repeatable")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a line for the table header (e.g. reduced sizes)")
    parser.add_argument("--output", default=str(RESULTS / "decoder_prefill_speed"), help="path without suffix")
    args = parser.parse_args()

    import torch
    import transformers

    from benchmarks.common import machine, write_results
    from tokcomp.evaluation import decoder
    from tokcomp.pipeline import apply_passes

    started = time.perf_counter()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.model.startswith("random:"):
        tokenizer, original = None, random_model(args.model.split(":", 1)[1], dtype)
    else:
        from tokcomp.zoo import pull

        folder = str(pull(args.model)) if args.model.startswith("zoo:") else args.model
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        original = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    original = original.eval().to(device)
    specs = [json.loads(s) for s in args.specs or [json.dumps(DEFAULT_PASS)]]
    models = {"original": original}
    for spec in specs:
        compressed = copy.deepcopy(original)
        apply_passes(compressed, [spec], sequence_length=1024)
        models[pass_label(spec)] = compressed
    rows = []
    output = Path(args.output)
    for length in [int(x) for x in args.lengths.split(",")]:
        if tokenizer is None:  # random weights: random ids past the special tokens
            generator = torch.Generator().manual_seed(args.seed + length)
            ids = torch.randint(1000, original.config.vocab_size, (1, length), generator=generator).to(device)
        else:
            text = decoder.prose_prompts(tokenizer, length, 1, args.seed)[0]
            ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
        before = machine()
        costs = decoder.interleaved_costs(models, ids, args.repeats, args.new_tokens)
        rows.append({"length": length, "tokens": int(ids.shape[1]), "models": costs, "machine_before": before,
                     "machine_after": machine()})  # fmt: skip
        summary = {k: f"{v['ttft_s']:.4f} s, {v['decode_tokens_per_s']:.1f} tok/s" for k, v in costs.items()}
        print(f"{length}: {json.dumps(summary)}", flush=True)
        result = {
            "model": args.model, "passes": specs, "repeats": args.repeats, "new_tokens": args.new_tokens,
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "dtype": args.dtype, "note": args.note,
            "peak_memory_measure": decoder.peak_memory(lambda: None, device)[2],
            "rows": rows, "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        write_results(output.parent, output.stem, result, to_markdown(result), show=False)  # kept if cut short
    print(to_markdown(result))


def to_markdown(result: dict) -> str:
    first = result["rows"][0]["machine_before"]
    where = result["device_name"] or f"{first['cpu']}, {first['threads']} threads"
    prompts = "random token ids (random weights)" if result["model"].startswith("random:") else "held-out prose (zoo:prose)"
    lines = [
        f"# Time to first token and KV cache: {result['model']}, original vs "
        + ", ".join(pass_label(s) for s in result["passes"]),
        "",
        (
            f"Device {result['device']} ({where}), {result['dtype']}. Medians of {result['repeats']} interleaved "
            f"repeats; decoding speed over {result['new_tokens']} greedy tokens; peak memory: "
            f"{result['peak_memory_measure']}. Prompts: {prompts}."
        ),
    ]
    if result["note"]:
        lines += ["", f"**{result['note']}**"]
    header = ["prompt tokens", "model", "TTFT (s)", "TTFT speed-up", "decode tok/s", "KV cache MiB",
              "peak prefill MiB", "load avg before / after"]  # fmt: skip
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        base = row["models"]["original"]["ttft_s"]
        load = f"{row['machine_before']['load_average']} / {row['machine_after']['load_average']}"
        for name, c in row["models"].items():
            peak = "-" if c["peak_prefill_bytes"] is None else f"{c['peak_prefill_bytes'] / 2**20:.1f}"
            lines.append(
                f"| {row['tokens']} | {name} | {c['ttft_s']:.4f} | {base / c['ttft_s']:.2f}x | "
                f"{c['decode_tokens_per_s']:.1f} | {c['kv_cache_bytes'] / 2**20:.2f} | {peak} | {load} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
