"""Needle retrieval and continuation fidelity: tokcomp prefill passes beside kvpress presses, one model, one run.

    python benchmarks/decoder_kvpress.py [--model zoo:gemma-3-270m] [--lengths 1024,2048,4096,8192]
        [--depths 0.1,0.5,0.9] [--samples 4] [--keeps 0.5,0.25,0.1]
        [--passes '[{"type": "fastv", "layer": 6, "sink": 4, "question": 32}, ...]']
        [--presses snapkv,streaming_llm,expected_attention,knorm] [--fidelity-length 1024] [--fidelity-samples 4]
        [--note TEXT] [--scope TEXT] [--output benchmarks/results/decoder_kvpress]

Rows: the original model; every tokcomp pass spec at every kept share (`keep` set to the share, or the
field a spec names in "keep_field", so passes with another budget name slot in); every kvpress press
at compression_ratio = 1 - share. Same model, same needle prompts (evaluation/needle.py: held-out
zoo:prose haystack, facts asked as continuations), same prose prompts for fidelity, same run.

How each side compresses, which is not the same thing:
- tokcomp passes drop prompt tokens inside prefill (FastV: after layer K, every later layer and its
  cache hold the kept tokens; the first `sink` and last `question` prompt tokens are never dropped).
  The whole prompt, cue included, is prefilled at once, so the answer's first token already comes
  from the reduced layers.
- kvpress presses compress the KV cache of the context after prefill (forward hooks), as its own
  pipeline does: the context is everything before the cue ("Marco's locker code is"); the cue then
  runs through the compressed cache, and the answer is decoded greedily. On Gemma-3 the presses
  compress the full-attention layers only (what kvpress does for Gemma-3: sliding layers keep their
  window); their share is of those layers' entries.
- Fidelity: the original's greedy continuation of a prose prompt, teacher-forced; KL(original ||
  compressed) and top-1 agreement of the next `continuation` tokens' distributions. kvpress
  compresses after the prompt's own forward pass, so its first continuation token is exact.

kvpress 0.5.5 requires transformers < 5.3 (and its hooks read the attention call's `past_key_values`,
which transformers 5.25 renamed), so the presses run in a second interpreter: .venv-kvpress (created on
first use, git-ignored) with transformers 5.2 and kvpress 0.5.5, sharing this interpreter's torch and
other packages through a .pth file. It runs in the background while this process scores the tokcomp
passes, receives the prompts as token ids (JSON in, JSON out) and also runs the unpressed model, a check
that both transformers versions agree on the original. No timing.
Writes benchmarks/results/decoder_kvpress.{json,md} (or --output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KVPRESS_VENV = ROOT / ".venv-kvpress"
KVPRESS_PINS = ["transformers>=5.2,<5.3", "kvpress==0.5.5", "kernels>=0.10.2,<0.11"]  # kernels: what 5.2 imports
PRESSES = {
    "snapkv": "SnapKVPress",
    "streaming_llm": "StreamingLLMPress",
    "expected_attention": "ExpectedAttentionPress",
    "knorm": "KnormPress",
}
# The shipped Gemma recipes' settings (recipes/*_gemma.yaml): in-prefill drops rank after full-attention layers.
SPAN = {"sink": 4, "question": 32}
DEFAULT_PASSES = [
    {"type": "fastv", "layer": 6, **SPAN},
    {"type": "pyramid_drop", "layers": [6, 12], "keep_field": "target_keep", **SPAN},
    {"type": "gemfilter", "layer": 6, **SPAN},
    {"type": "snapkv", **SPAN},
    {"type": "streaming_llm", **SPAN},
]


# ====================================================================== worker (runs in .venv-kvpress)


def worker(request_path: str, response_path: str) -> None:
    """Needle continuations and fidelity for every press and ratio; imports kvpress, never tokcomp."""
    import contextlib

    import kvpress
    import torch
    import transformers

    request = json.loads(Path(request_path).read_text())
    torch.set_num_threads(request["threads"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(request["model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32).eval()

    @contextlib.contextmanager
    def pressed(press):
        """kvpress's own hooks, on the layers it compresses for Gemma-3 (full attention) or on every layer."""
        if press is None:
            yield
            return
        press.post_init_from_model(model)
        hooks = []
        rotary = model.model.rotary_emb
        for layer in model.model.layers:
            attn = layer.self_attn
            if getattr(attn, "is_sliding", False):
                continue
            layer_type = getattr(attn, "layer_type", None)
            attn.rotary_emb = (lambda x, p, t=layer_type: rotary(x, p, t)) if layer_type else rotary
            hooks.append(attn.register_forward_hook(press.forward_hook, with_kwargs=True))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def cache_bytes(cache):
        return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

    @torch.no_grad()
    def prefill(press, ids):
        cache = transformers.DynamicCache(config=model.config)
        with pressed(press):
            logits = model(input_ids=ids, past_key_values=cache, logits_to_keep=1).logits[0, -1]
        return logits, cache

    @torch.no_grad()
    def through_cache(cache, tokens, start):
        position = torch.arange(start, start + tokens.shape[1])[None]
        return model(input_ids=tokens, past_key_values=cache, position_ids=position).logits[0]

    @torch.no_grad()
    def needle(press, ids, split, new_tokens):
        logits, cache = prefill(press, ids[:, :split])
        size = cache_bytes(cache)
        logits = through_cache(cache, ids[:, split:], split)[-1]
        tokens, start = [int(logits.argmax())], ids.shape[1]
        for step in range(new_tokens - 1):
            logits = through_cache(cache, torch.tensor([[tokens[-1]]]), start + step)[-1]
            tokens.append(int(logits.argmax()))
        return tokenizer.decode(tokens, skip_special_tokens=True), size

    @torch.no_grad()
    def forced(press, ids, reference):
        first, cache = prefill(press, ids)
        size = cache_bytes(cache)  # after prefill, before the continuation adds its own entries
        rest = through_cache(cache, torch.tensor([reference[:-1]]), ids.shape[1])
        return torch.cat([first[None], rest]), size

    def fidelity(p_logits, q_logits):
        log_p, log_q = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0).mean().item()
        return kl, (p_logits.argmax(-1) == q_logits.argmax(-1)).float().mean().item()

    versions = {"transformers": transformers.__version__, "kvpress": _version("kvpress"), "torch": torch.__version__}
    rows = []
    settings = [(None, None)] + [(name, ratio) for name in request["presses"] for ratio in request["ratios"]]
    baseline = {}
    for name, ratio in settings:
        press = None if name is None else getattr(kvpress, name)(compression_ratio=ratio)
        started = time.perf_counter()
        needles = [
            needle(press, torch.tensor([s["ids"]]), s["split"], request["new_tokens"]) for s in request["needles"]
        ]
        scores = []
        for i, p in enumerate(request["prose"]):
            logits, size = forced(press, torch.tensor([p["ids"]]), p["reference"])
            if name is None:
                baseline[i] = logits
            scores.append((*fidelity(baseline[i], logits), size))
        rows.append({
            "press": name, "compression_ratio": ratio,
            "continuations": [text for text, _ in needles], "needle_cache_bytes": [size for _, size in needles],
            "kl": [s[0] for s in scores], "top1_agreement": [s[1] for s in scores], "prose_cache_bytes": [s[2] for s in scores],
            "seconds": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        print(f"kvpress {name} {ratio}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
        # After every row: a stopped run leaves what it measured.
        Path(response_path).write_text(json.dumps({"rows": rows, "versions": versions}))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# ====================================================================== the benchmark (project interpreter)


def ensure_kvpress_venv(python: str | None) -> str:
    """The interpreter that runs kvpress: --kvpress-python, or .venv-kvpress (created on first use)."""
    if python:
        return python
    target = KVPRESS_VENV / "bin" / "python"
    if target.exists():
        return str(target)
    import site
    import sysconfig

    print(f"creating {KVPRESS_VENV} (transformers 5.2, kvpress 0.5.5)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KVPRESS_VENV)], check=True)
    own = subprocess.run(
        [str(target), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    # Appended after the new venv's own packages: its transformers 5.2 shadows ours, torch is shared.
    (Path(own) / "zz_tokcomp_shared.pth").write_text("\n".join(shared) + "\n")
    subprocess.run([str(target), "-m", "pip", "install", "-q", *KVPRESS_PINS], check=True)
    return str(target)


def start_kvpress(python: str, request: dict, folder: Path) -> tuple[subprocess.Popen, Path]:
    """The kvpress worker, started in the background: it runs while this process scores the tokcomp passes."""
    request_path, response_path = folder / "request.json", folder / "response.json"
    request_path.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the worker never imports tokcomp
    worker = subprocess.Popen([python, __file__, "--worker", str(request_path), str(response_path)], env=env)
    return worker, response_path


def finish_kvpress(worker: subprocess.Popen, response_path: Path) -> dict:
    if worker.wait() != 0:
        raise RuntimeError(f"the kvpress worker failed (exit {worker.returncode}); its error is printed above")
    return json.loads(response_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:gemma-3-270m")
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--samples", type=int, default=4, help="needle prompts per (length, depth)")
    parser.add_argument("--keys", type=int, default=1, help="facts planted per needle prompt")
    parser.add_argument("--keeps", default="0.5,0.25,0.1", help="kept shares (kvpress: compression_ratio = 1 - keep)")
    parser.add_argument("--passes", default=json.dumps(DEFAULT_PASSES), help="JSON list of tokcomp pass specs")
    parser.add_argument("--presses", default=",".join(PRESSES), help=f"kvpress presses: {', '.join(PRESSES)}")
    parser.add_argument("--fidelity-length", type=int, default=1024)
    parser.add_argument("--fidelity-samples", type=int, default=4)
    parser.add_argument("--continuation", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kvpress-python", default=None, help="an interpreter with kvpress (default: .venv-kvpress)")
    parser.add_argument("--kvpress-threads", type=int, default=1, help="torch threads of the kvpress worker")
    parser.add_argument("--note", default="", help="a line for the table header (e.g. reduced sizes)")
    parser.add_argument(
        "--scope",
        default="",
        help="what sets this run apart from the main grid (README rows keep it: '8,192-token prompts')",
    )
    parser.add_argument("--output", default=str(RESULTS / "decoder_kvpress"), help="path without suffix")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    run(args)


def run(args) -> None:
    import copy

    import torch
    import transformers

    from benchmarks.common import machine, write_results
    from tokcomp.evaluation import decoder, needle
    from tokcomp.pipeline import apply_passes
    from tokcomp.zoo import pull

    started = time.perf_counter()
    folder = str(pull(args.model)) if args.model.startswith("zoo:") else args.model
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    original = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    keeps = [float(x) for x in args.keeps.split(",")]
    specs = json.loads(args.passes)
    presses = [PRESSES[p] for p in args.presses.split(",") if p]
    machine_before = machine()
    samples = needle.build_samples(tokenizer, lengths, depths, args.samples, args.keys, args.seed)
    prompts = decoder.prose_prompts(tokenizer, args.fidelity_length, args.fidelity_samples, args.seed)
    prose_ids = [tokenizer(text, return_tensors="pt").input_ids for text in prompts]
    references = [decoder.greedy_tokens(original, ids, args.continuation) for ids in prose_ids]
    original_logits = [decoder.teacher_forced_logits(original, ids, ref) for ids, ref in zip(prose_ids, references)]

    def score_model(model, label: str) -> dict:
        t = time.perf_counter()
        runs = decoder.needle_run(model, tokenizer, samples)
        fid = [
            decoder.distribution_fidelity(o, decoder.teacher_forced_logits(model, ids, ref))
            for o, ids, ref in zip(original_logits, prose_ids, references)
        ]
        _, cache = decoder.prefill(model, prose_ids[0])
        print(f"{label}: {time.perf_counter() - t:.0f} s", flush=True)
        return _row(label, samples, [r["correct"] for r in runs], [r["continuation"] for r in runs],
                    [f["kl"] for f in fid], [f["top1_agreement"] for f in fid], decoder.kv_cache_bytes(cache))  # fmt: skip

    def write(rows: list, partial: bool) -> None:
        """The JSON and markdown so far (after every row, so a stopped run keeps what it measured)."""
        result = {
            "model": args.model, "partial": partial,
            "lengths": lengths, "depths": depths, "samples_per_cell": args.samples, "keys": args.keys,
            "keeps": keeps, "passes": specs, "presses": presses, "haystack": needle.HAYSTACK_SOURCE,
            "fidelity": {"prompt_tokens": [int(i.shape[1]) for i in prose_ids], "continuation": args.continuation},
            "kvpress": kvpress_info, "note": args.note, "scope": args.scope,
            "machine_before": machine_before, "machine_after": machine(),
            "rows": rows, "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        output = Path(args.output)
        write_results(output.parent, output.stem, result, to_markdown(result), show=not partial)

    kvpress_info, worker, scratch = None, None, tempfile.TemporaryDirectory()
    if presses:
        request = {
            "model": folder, "threads": args.kvpress_threads, "presses": presses,
            "ratios": [round(1 - k, 6) for k in keeps], "new_tokens": needle.ANSWER_TOKENS,
            "needles": [_split_ids(tokenizer, s) for s in samples],
            "prose": [{"ids": ids[0].tolist(), "reference": ref} for ids, ref in zip(prose_ids, references)],
        }  # fmt: skip
        worker = start_kvpress(ensure_kvpress_venv(args.kvpress_python), request, Path(scratch.name))
    rows = [score_model(original, "original") | {"method": "original", "keep": 1.0}]
    write(rows, partial=True)
    for spec in specs:
        spec = dict(spec)
        field = spec.pop("keep_field", "keep")
        for keep in keeps:
            model = copy.deepcopy(original)
            apply_passes(model, [{**spec, field: keep}], sequence_length=args.fidelity_length)
            label = f"tokcomp {spec['type']}"
            rows.append(score_model(model, f"{label} keep {keep}") | {"method": label, "keep": keep})
            write(rows, partial=True)
            del model

    if worker is not None:
        response = finish_kvpress(*worker)
        scratch.cleanup()
        kvpress_info = response["versions"]
        for r in response["rows"]:
            correct = [needle.is_correct(s, text) for s, text in zip(samples, r["continuations"], strict=True)]
            name = r["press"] or "no press"
            keep = 1.0 if r["compression_ratio"] is None else round(1 - r["compression_ratio"], 6)
            label = f"kvpress {name}" + ("" if r["press"] is None else f" keep {keep}")
            row = _row(label, samples, correct, r["continuations"], r["kl"], r["top1_agreement"],
                       r["prose_cache_bytes"][0])  # fmt: skip
            rows.append(row | {"method": f"kvpress {name}", "keep": keep})
    write(rows, partial=False)


def _split_ids(tokenizer, sample) -> dict:
    """The prompt's token ids and where the cue starts: the same tokens the tokcomp side prefills."""
    ids = tokenizer(sample.prompt).input_ids
    split = len(tokenizer(sample.context).input_ids)
    if ids[:split] != tokenizer(sample.context).input_ids:
        raise RuntimeError(f"the tokenizer merges the context into the cue {sample.query!r}; cannot split the prompt")
    return {"ids": ids, "split": split}


def _row(label, samples, correct, continuations, kl, top1, cache_bytes) -> dict:
    from tokcomp.evaluation import needle

    return {
        "label": label,
        "needle_accuracy": needle.overall_accuracy(correct),
        "cells": needle.accuracy_table(samples, correct),
        "continuations": continuations,
        "kl": sum(kl) / len(kl),
        "top1_agreement": sum(top1) / len(top1),
        "kv_cache_bytes_prose": cache_bytes,
    }


def to_markdown(result: dict) -> str:
    cells = [(c["length"], c["depth"]) for c in result["rows"][0]["cells"]]
    m = result["machine_before"]
    lines = [
        f"# Needle retrieval and continuation fidelity: tokcomp passes and kvpress presses on {result['model']}",
        "",
        (
            f"Needle: {result['samples_per_cell']} prompts per cell, {result['keys']} fact(s) planted, haystack "
            f"{result['haystack']}; greedy continuation must start with the exact 5 digits. Fidelity: "
            f"{len(result['fidelity']['prompt_tokens'])} prose prompts of {min(result['fidelity']['prompt_tokens'])}-"
            f"{max(result['fidelity']['prompt_tokens'])} tokens, next {result['fidelity']['continuation']} tokens "
            "teacher-forced on the original's greedy continuation. KV MiB: the cache after the first prose prompt."
        ),
        (
            f"Machine: {m['cpu']}, {m['threads']} threads, load average {m['load_average']} before, "
            f"{result['machine_after']['load_average']} after; {result['seconds']:.0f} s. kvpress: {result['kvpress']}."
        ),
    ]
    if result["note"]:
        lines += ["", f"**{result['note']}**"]
    if result.get("partial"):
        lines += ["", "**Partial: written while the run was still going.**"]
    header = ["method", "keep", "needle (all)"] + [f"{n} tok @ {d}" for n, d in cells] + ["KL", "top-1", "KV MiB"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    original = {(c["length"], c["depth"]): c["correct"] for c in result["rows"][0]["cells"]}
    for row in result["rows"]:
        by_cell = {(c["length"], c["depth"]): c for c in row["cells"]}
        marks = []
        for key in cells:
            c = by_cell[key]
            worse = "**" if c["correct"] < original[key] else ""
            marks.append(f"{worse}{c['correct']}/{c['n']}{worse}")
        lines.append(
            f"| {row['method']} | {row['keep']:g} | {100 * row['needle_accuracy']:.0f}% | " + " | ".join(marks)
            + f" | {row['kl']:.3f} | {row['top1_agreement']:.3f} | {row['kv_cache_bytes_prose'] / 2**20:.2f} |"
        )  # fmt: skip
    lines += ["", "Bold: fewer needles than the original in that cell.", ""] + by_length(result)
    return "\n".join(lines) + "\n"


def per_length(row: dict) -> dict[int, tuple[int, int]]:
    """(correct, prompts) per prompt length, over its depths."""
    out: dict[int, tuple[int, int]] = {}
    for c in row["cells"]:
        hits, n = out.get(c["length"], (0, 0))
        out[c["length"]] = (hits + c["correct"], n + c["n"])
    return out


def by_length(result: dict) -> list[str]:
    """Needles answered per length and kept share (every depth together), and the 25%-kept comparison:
    the best tokcomp pass and the best kvpress press (most needles over all lengths) against the original."""
    rows = result["rows"]
    lengths = sorted(per_length(rows[0]))
    lines = [
        "## Per prompt length (all depths)",
        "",
        "| method | keep | " + " | ".join(f"{n} tok" for n in lengths) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(lengths))
    for row in rows:
        counts = per_length(row)
        lines.append(
            f"| {row['method']} | {row['keep']:g} | "
            + " | ".join(f"{counts[n][0]}/{counts[n][1]}" for n in lengths)
            + " |"
        )
    original = per_length(rows[0])

    def best(prefix: str) -> dict | None:
        found = [r for r in rows if r["method"].startswith(prefix) and abs(r["keep"] - 0.25) < 1e-9]
        return max(found, key=lambda r: (r["needle_accuracy"], -r["kl"]), default=None)

    ours, theirs = best("tokcomp"), best("kvpress")
    if ours is None:
        return lines + [""]
    mine = per_length(ours)
    matched = [n for n in lengths if mine[n][0] >= original[n][0]]
    verdict = [
        "",
        f"At 25% kept, the best tokcomp pass is {ours['method']} ({100 * ours['needle_accuracy']:.0f}% of needles); "
        f"it matches the original's count at {len(matched)} of {len(lengths)} lengths"
        + (
            ""
            if len(matched) == len(lengths)
            else f" (not at {', '.join(str(n) for n in lengths if n not in matched)})"
        )
        + ".",
    ]
    if theirs is not None:
        relation = "at least as many as" if ours["needle_accuracy"] >= theirs["needle_accuracy"] else "fewer than"
        verdict[-1] += (
            f" The best kvpress press at the same share is {theirs['method']} ({100 * theirs['needle_accuracy']:.0f}%):"
            f" tokcomp answers {relation} it."
        )
    return lines + verdict + [""]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
