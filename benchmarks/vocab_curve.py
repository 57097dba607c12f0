"""Size-vs-coverage curve of vocabulary trimming, plus one fully checked compile per model.

    .venv/bin/python benchmarks/vocab_curve.py            # both models (about 10 min on 2 CPU cores)
    .venv/bin/python benchmarks/vocab_curve.py gemma      # one of: gemma, e5

For each model the corpus is tokenized once; every selection rule below is then applied
to the same counts, and its kept set is measured on held-out text that was never
counted: the share of the original tokens that survive (coverage), the share of
held-out texts whose tokens all survive (these round-trip exactly), and the parameter
count after slicing every vocabulary tensor. Finally the model's recipe in recipes/ is
compiled end to end, which runs every built-in check (round-trip, logits, generation,
structure) and times the trim.

Writes benchmarks/results/vocab_<model>_curve.{csv,json,png} and vocab_curve.md.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKCOMP_QUIET", "1")

import tokcomp  # noqa: E402
from tokcomp.recipe import load_recipe  # noqa: E402
from tokcomp.sources import load_model  # noqa: E402
from tokcomp.vocab.config import SelectionRule, VocabTrimConfig  # noqa: E402
from tokcomp.vocab.corpus import load_corpus  # noqa: E402
from tokcomp.vocab.model_surgery import find_vocab_tensors, vocab_rows  # noqa: E402
from tokcomp.vocab.selection import count_tokens, plain_copy, select  # noqa: E402
from tokcomp.vocab.tokenizer_json import TokenizerJson  # noqa: E402
from tokcomp.vocab.trim import tokenizer_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETUPS = {
    "gemma": {
        "recipe": ROOT / "recipes" / "vocab_trim_gemma_en.yaml",
        "rules": [{"top_n": n} for n in (8000, 16000, 32000, 48000, 64000, 80000, 96000)]
        + [{"coverage": c} for c in (0.99, 0.995, 0.999, 0.9999)]
        + [{"min_freq": 1}],
    },
    "e5": {
        "recipe": ROOT / "recipes" / "vocab_trim_e5_de_fr.yaml",
        "rules": [{"top_n": n} for n in (4000, 8000, 16000, 24000)]
        + [{"coverage": c} for c in (0.99, 0.995, 0.999, 0.9999)]
        + [{"min_freq": 1}],
    },
}


def curve(name: str) -> dict:
    recipe = load_recipe(SETUPS[name]["recipe"])
    config: VocabTrimConfig = recipe.passes[0].config
    loaded = load_model(recipe.model)
    model, processor = loaded.model, loaded.processor
    spec = TokenizerJson.parse(tokenizer_json(processor))
    corpus = load_corpus(config)
    started = time.perf_counter()
    counts = count_tokens(processor.backend_tokenizer, corpus.parts, spec.size)
    count_seconds = time.perf_counter() - started
    held = [np.asarray(e.ids, dtype=np.int64) for e in plain_copy(processor.backend_tokenizer).encode_batch(corpus.held_out, add_special_tokens=False)]
    flat = np.concatenate(held)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    rows = vocab_rows(model)
    per_row = sum(t.tensor.numel() // rows for t in find_vocab_tensors(model) if not t.tensor.dim() == 0)
    points = []
    for rule in SETUPS[name]["rules"]:
        selection = select(spec, counts, SelectionRule(**rule), {}, config.keep_tokens, config.keep_symbols)
        keep = np.zeros(spec.size, dtype=bool)
        keep[selection.kept] = True
        trimmed = params - (rows - len(selection.kept)) * per_row
        points.append(
            {
                "rule": json.dumps(rule),
                "vocab": len(selection.kept),
                "corpus_tokens": selection.reasons["corpus"],
                "params": trimmed,
                "params_ratio": round(trimmed / params, 4),
                "held_out_token_coverage": round(float(keep[flat].mean()), 4),
                "held_out_texts_fully_kept": round(float(np.mean([keep[x].all() for x in held])), 4),
            }
        )
    del model, loaded
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        out = tokcomp.compile(recipe, Path(tmp) / "out")
        compile_seconds = time.perf_counter() - started
        report = json.loads((out / "report.json").read_text())["vocab_trim"]
    report.pop("tensors")
    return {
        "model": recipe.model.source,
        "languages": config.languages,
        "corpus": [p.name for p in corpus.parts],
        "held_out": corpus.held_out_source,
        "held_out_tokens": int(len(flat)),
        "held_out_texts": len(held),
        "original_vocab": spec.size,
        "original_params": params,
        "count_seconds": round(count_seconds, 1),
        "points": points,
        "recipe": str(SETUPS[name]["recipe"].relative_to(ROOT)),
        "compile_seconds": round(compile_seconds, 1),
        "compiled": report,
        "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
    }


def write(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"vocab_{name}_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(RESULTS / f"vocab_{name}_curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result["points"][0]))
        writer.writeheader()
        writer.writerows(result["points"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, marker in (("top_n", "o"), ("coverage", "s"), ("min_freq", "*")):
        pts = [p for p in result["points"] if kind in p["rule"]]
        ax.plot([p["params_ratio"] * 100 for p in pts], [p["held_out_token_coverage"] * 100 for p in pts], marker=marker, label=kind)
    ax.set_xlabel("parameters after trimming (% of original)")
    ax.set_ylabel("held-out tokens kept (%)")
    ax.set_title(f"{result['model']} -> {'+'.join(result['languages'])} (held out: {result['held_out']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"vocab_{name}_curve.png", dpi=120)


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Vocabulary trimming: size vs. coverage", "", "Generated by `benchmarks/vocab_curve.py`.", ""]
    for name, r in results.items():
        c = r["compiled"]
        checks = c["checks"]
        lines += [
            f"## {r['model']} -> {', '.join(r['languages'])}",
            "",
            f"Corpus (counted): {', '.join(r['corpus'])}. Held out (never counted): {r['held_out']} "
            f"({r['held_out_texts']} texts, {r['held_out_tokens']} original tokens). Original: {r['original_vocab']} tokens, "
            f"{r['original_params']:,} parameters. Counting took {r['count_seconds']} s.",
            "",
            "| rule | vocab | params | params % | held-out tokens kept | held-out texts fully kept |",
            "|---|---|---|---|---|---|",
        ]
        for p in r["points"]:
            lines.append(
                f"| `{p['rule']}` | {p['vocab']:,} | {p['params']:,} | {p['params_ratio'] * 100:.1f}% | "
                f"{p['held_out_token_coverage'] * 100:.2f}% | {p['held_out_texts_fully_kept'] * 100:.1f}% |"
            )
        model_check = (
            f"logits max abs diff {checks['logits']['max_abs_diff']:.2g} on {checks['logits']['tokens']} tokens"
            if "logits" in checks
            else f"pooled-embedding min cosine {checks['embeddings']['min_cosine']:.7f} on {checks['embeddings']['texts']} texts"
        )
        gen = checks.get("generation")
        off = checks.get("off_target") or {}
        lines += [
            "",
            f"Compiled `{r['recipe']}` (rule `{json.dumps(c['rule'])}`): {c['vocab']['trimmed']:,} tokens, "
            f"params {c['params']['ratio'] * 100:.1f}% of the original; held-out token coverage "
            f"{checks['held_out']['token_coverage'] * 100:.2f}%; id round-trip exact on "
            f"{checks['held_out']['round_trip_exact']}/{checks['held_out']['texts_fully_kept']} fully kept texts; "
            f"texts needing removed tokens: {checks['held_out']['texts_needing_removed_tokens']} "
            f"(token inflation x{checks['held_out']['inflation_on_those']:.3f}, decode unchanged on "
            f"{checks['held_out']['decode_equal_on_those'] * 100:.0f}%); {model_check}"
            + (f"; greedy generation identical on {gen['identical']}/{gen['prompts']} prompts" if gen else "")
            + f". Off-target ({off.get('source')}): inflation x{off.get('inflation_overall', 0):.2f}, "
            f"unknown-token rate {off.get('unk_rate_trimmed', 0) * 100:.1f}% (original {off.get('unk_rate_original', 0) * 100:.1f}%). "
            f"Trim time after loading: {c['seconds']['selection_and_tokenizer'] + c['seconds']['model_surgery']:.0f} s "
            f"+ {c['seconds']['checks']:.0f} s of checks; whole compile {r['compile_seconds']} s ({r['machine']}).",
            "",
            f"![curve](vocab_{name}_curve.png)",
            "",
        ]
    return "\n".join(lines)


def main(names: list[str]) -> None:
    results = {}
    for name in names:
        results[name] = curve(name)
        write(name, results[name])
        print(json.dumps(results[name]["points"], indent=1))
    existing = {}
    for name in SETUPS:
        path = RESULTS / f"vocab_{name}_curve.json"
        if name not in results and path.is_file():
            existing[name] = json.loads(path.read_text())
    (RESULTS / "vocab_curve.md").write_text(markdown({**existing, **results}))


if __name__ == "__main__":
    main(sys.argv[1:] or list(SETUPS))
