"""Long-prompt evaluation of decoder LLMs: needle prompts, continuation fidelity, KV-cache accounting.

Fast tests use a tiny random Llama and a small byte-level BPE tokenizer trained in memory on
synthetic sentences; the slow tests use the real zoo:gemma-3-270m on the held-out prose.
"""

from __future__ import annotations

import copy
import random
import re

import pytest
import torch
import transformers

from tokcomp.evaluation import decoder, needle
from tokcomp.pipeline import apply_passes

WORDS = [
    "the",
    "system",
    "stores",
    "every",
    "file",
    "in",
    "a",
    "folder",
    "while",
    "the",
    "user",
    "reads",
    "old",
    "logs",
    "and",
    "the",
    "kernel",
    "writes",
    "new",
    "pages",
    "before",
    "a",
    "package",
    "manager",
    "checks",
    "which",
    "archive",
    "holds",
    "the",
    "right",
    "version",
    "of",
    "each",
    "library",
]


def synthetic_sentences(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        out.append(" ".join(words).capitalize() + ".")
    return out


@pytest.fixture(scope="module")
def sentences():
    return synthetic_sentences()


@pytest.fixture(scope="module")
def tokenizer(sentences):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    facts = [needle.Fact(n, i, "12345").sentence for n in needle.NAMES for i in needle.ITEMS]
    bpe.train_from_iterator(sentences + facts, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>")


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def fastv(base, keep: float):
    model = copy.deepcopy(base)
    apply_passes(model, [{"type": "fastv", "keep": keep, "layer": 2, "sink": 2, "question": 8}], sequence_length=256)
    return model


# ------------------------------------------------------------------ needle prompts


def test_needle_prompts_have_the_asked_length_and_depth(tokenizer, sentences):
    longest = max(len(tokenizer(" " + s, add_special_tokens=False).input_ids) for s in sentences)
    samples = needle.build_samples(tokenizer, (256, 512), (0.1, 0.5, 0.9), samples=3, keys=3, sentences=sentences)
    assert len(samples) == 2 * 3 * 3
    for sample in samples:
        ids = tokenizer(sample.prompt).input_ids
        assert len(ids) == sample.tokens
        assert sample.length - longest - 4 <= sample.tokens <= sample.length  # whole sentences, never over
        # The queried fact starts at the asked depth (within one sentence, the placement's granularity).
        assert abs(sample.needle_token / sample.tokens - sample.depth) <= (longest + 2) / sample.tokens
        assert re.fullmatch(r"\d{5}", sample.answer)
        assert sample.prompt.endswith(sample.query) and f"{sample.query.strip()} {sample.answer}." in sample.context
        planted = re.findall(r"(\w+)'s [a-z ]+ is (\d{5})\.", sample.context)
        assert len(planted) == 3 and len({name for name, _ in planted}) == 3  # k facts, distinct names
        assert sample.context.count(sample.query.strip()) == 1  # the cue names one fact only


def test_needle_prompts_are_deterministic_per_seed(tokenizer, sentences):
    def build(seed):
        return needle.build_samples(tokenizer, (256,), (0.5,), samples=4, seed=seed, sentences=sentences)

    first, again, other = build(0), build(0), build(1)
    assert first == again
    assert [s.prompt for s in first] != [s.prompt for s in other]
    assert len({s.answer for s in first}) == 4 and len({s.query for s in first}) > 1  # values and names vary


def test_haystack_is_the_evaluation_split_without_repeats(monkeypatch):
    from tokcomp.zoo import eval_sets

    texts = {
        "eval": ["One held out sentence.", "Another held out sentence.",
                 "One held out sentence. Another held out sentence.", "Version 2 ships now."],
        "calib": ["A calibration sentence."],
    }  # fmt: skip
    asked = []
    monkeypatch.setattr(eval_sets, "evaluation_texts", lambda lang, split: asked.append((lang, split)) or texts[split])
    assert needle.held_out_sentences() == ["One held out sentence.", "Another held out sentence."]
    assert asked == [("en", "eval")]  # never the calibration split; the paragraph and the digits left out


def test_bad_needle_requests_are_one_line_errors(tokenizer, sentences):
    with pytest.raises(needle.NeedleError, match="depth") as error:
        needle.build_samples(tokenizer, (256,), (1.5,), sentences=sentences)
    assert "\n" not in str(error.value)
    with pytest.raises(needle.NeedleError, match="no room"):
        needle.build_samples(tokenizer, (20,), (0.5,), keys=3, sentences=sentences)


def test_scoring_reads_the_exact_leading_digits():
    sample = needle.NeedleSample(256, 0.5, 1, 0, "ctx", " Marco's locker code is", "60494", 200, 100)
    assert needle.is_correct(sample, " 60494. The")
    assert needle.is_correct(sample, "60494")
    assert not needle.is_correct(sample, " 6049.")
    assert not needle.is_correct(sample, " 604941")
    assert not needle.is_correct(sample, " code 60494")
    cells = needle.accuracy_table([sample, sample], [True, False])
    assert cells == [{"length": 256, "depth": 0.5, "n": 2, "correct": 1, "accuracy": 0.5}]


# ------------------------------------------------------------------ fidelity and cost


def test_identical_models_have_zero_kl_and_full_agreement(tiny_llama, tokenizer, sentences):
    prompts = decoder.prose_prompts(tokenizer, 160, 1, seed=0, sentences=sentences)
    assert all(140 <= len(tokenizer(p).input_ids) <= 160 for p in prompts)
    rows = decoder.fidelity_run(tiny_llama, copy.deepcopy(tiny_llama), tokenizer, prompts, continuation=8)
    for row in rows:
        assert row["kl"] == pytest.approx(0.0, abs=1e-6)
        assert row["top1_agreement"] == 1.0 and row["greedy_agreement"] == 1.0 and row["positions"] == 8
    # The same metric sees a real change: FastV keeping a tenth of the prompt after layer 2.
    reduced = decoder.fidelity_run(tiny_llama, fastv(tiny_llama, 0.1), tokenizer, prompts, continuation=8)
    assert all(row["kl"] > 1e-4 for row in reduced)


def test_kl_is_the_textbook_formula():
    p = torch.tensor([[2.0, 0.0, -1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    expected = sum(a * (a.log() - b.log()) for a, b in zip(p.softmax(-1)[0], q.softmax(-1)[0], strict=True))
    scores = decoder.distribution_fidelity(p, q)
    assert scores["kl"] == pytest.approx(expected.item(), rel=1e-5) and scores["top1_agreement"] == 0.0


def test_cache_bytes_count_every_kept_key_and_value(tiny_llama):
    ids = torch.randint(3, 300, (1, 120), generator=torch.Generator().manual_seed(0))
    kv_heads, head_dim, layers = 2, 16, 4
    _, cache = decoder.prefill(tiny_llama, ids)
    assert decoder.kv_cache_bytes(cache) == layers * 2 * kv_heads * 120 * head_dim * 4  # fp32 keys + values
    model = fastv(tiny_llama, 0.5)
    _, reduced = decoder.prefill(model, ids)
    lengths = decoder.cache_lengths(reduced)
    kept = 120 - model.model.layers[1].reducer.rate.of(120 - 2 - 8)
    assert lengths == [120, 120, kept, kept]  # layers 0-1 see the whole prompt
    assert decoder.kv_cache_bytes(reduced) == sum(lengths) * 2 * kv_heads * head_dim * 4


def test_costs_are_medians_of_interleaved_repeats(tiny_llama):
    ids = torch.randint(3, 300, (1, 64), generator=torch.Generator().manual_seed(0))
    costs = decoder.interleaved_costs({"original": tiny_llama, "compressed": fastv(tiny_llama, 0.5)}, ids, 2, 4)
    for name in ("original", "compressed"):
        assert costs[name]["repeats"] == 2 and costs[name]["ttft_s"] > 0 and costs[name]["decode_tokens_per_s"] > 0
        assert costs[name]["peak_prefill_bytes"] is not None and costs[name]["peak_prefill_bytes"] >= 0
    assert costs["compressed"]["kv_cache_bytes"] < costs["original"]["kv_cache_bytes"]


def test_peak_memory_sees_a_large_allocation():
    def allocate():
        x = torch.ones(64, 2**20)  # 256 MiB, touched
        return float(x[-1, -1])

    _, peak, how = decoder.peak_memory(allocate, torch.device("cpu"))
    assert "RSS" in how and peak >= 200 * 2**20


def test_poor_results_are_flagged_cell_by_cell():
    cell = {"length": 1024, "depth": 0.5, "n": 4}
    result = {
        "needle": {
            "original": {"accuracy": 1.0, "cells": [{**cell, "correct": 4, "accuracy": 1.0}]},
            "compressed": {"accuracy": 0.5, "cells": [{**cell, "correct": 2, "accuracy": 0.5}]},
        },
        "fidelity": {"kl": 0.3, "top1_agreement": 0.8, "greedy_agreement": 0.4, "continuation": 32},
    }
    flags = decoder.flags(result)
    assert any("compressed 2/4 vs original 4/4" in f for f in flags) and any("top-1 agreement" in f for f in flags)
    assert any("greedy generation follows the original for only 40%" in f for f in flags)
    rows = decoder.table_rows(result)
    assert [r[3] for r in rows] == [True, True, False, True, True]


def test_whole_evaluation_on_a_tiny_model(tiny_llama, tokenizer, sentences, monkeypatch):
    monkeypatch.setattr(needle, "held_out_sentences", lambda: sentences)
    config = decoder.DecoderEvalConfig(
        lengths=(128,), depths=(0.5,), samples=2, fidelity_length=128, fidelity_samples=1, continuation=4,
        timing_repeats=1,
    )  # fmt: skip
    result = decoder.evaluate_models(tiny_llama, fastv(tiny_llama, 0.5), tokenizer, config)
    assert [c["n"] for c in result["needle"]["original"]["cells"]] == [2]
    assert len(result["needle"]["prompts"]) == 2 and result["fidelity"]["samples"] == 1
    assert result["cost"]["compressed"]["kv_cache_bytes"] < result["cost"]["original"]["kv_cache_bytes"]
    assert "load_average_1_5_15" in result["cost"]["machine_before"]
    assert len(decoder.table_rows(result)) == 1 + 1 + 3 + 4


@pytest.mark.slow  # a tiny model, but compile + the CLI's full default run take tens of seconds on a busy CPU
@pytest.mark.heavy
def test_tokcomp_eval_on_a_decoder_checkpoint_writes_json_and_flags(
    tiny_llama, tokenizer, sentences, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    import tokcomp
    from tokcomp.cli import app
    from tokcomp.fileio import read_json

    tiny_llama.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    passes = [{"type": "fastv", "keep": 0.1, "layer": 2, "sink": 2, "question": 8}]
    recipe = {
        "model": {"source": str(tmp_path / "model"), "sequence_length": 128},
        "passes": passes,
        "evaluation": False,
    }
    tokcomp.compile(recipe, tmp_path / "out")
    monkeypatch.setattr(needle, "held_out_sentences", lambda: sentences)
    args = ["eval", str(tmp_path / "out"), "--lengths", "128", "--depths", "0.5", "--samples", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = read_json(tmp_path / "out" / "eval.json")
    assert written["kind"] == "tokcomp-eval" and written["task"] == "decoder-long-prompt"
    assert written["passes"] == ["fastv"] and written["config"]["lengths"] == [128]
    assert written["fidelity"]["samples"] == 1 and written["cost"]["compressed"]["repeats"] == 3
    assert "needle 128 tok, depth 0.5 (n=1)" in result.output and "KV cache after prefill" in result.output
    refused = CliRunner().invoke(app, [*args, "--force", "--lengths", "many"])
    assert "--lengths" in str(refused.exception) and "\n" not in str(refused.exception)


# ------------------------------------------------------------------ real model: zoo:gemma-3-270m


@pytest.fixture(scope="module")
def gemma():
    from tokcomp.zoo import pull

    folder = pull("zoo:gemma-3-270m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.mark.slow
@pytest.mark.heavy
def test_gemma_retrieves_the_needle_at_1k_tokens(gemma):
    tokenizer, model = gemma
    samples = needle.build_samples(tokenizer, (1024,), (0.1, 0.5, 0.9), samples=1, keys=1, seed=0)
    calibration = set(__import__("tokcomp.zoo.eval_sets", fromlist=["x"]).evaluation_texts("en", "calib"))
    held_out = needle.held_out_sentences()
    assert not calibration & set(held_out)
    for sample in samples:
        assert 1024 - 80 <= sample.tokens <= 1024
        assert not any(text in sample.context for text in calibration if len(text) > 40)
    runs = decoder.needle_run(model, tokenizer, samples)
    assert all(run["correct"] for run in runs), [
        (s.answer, r["continuation"]) for s, r in zip(samples, runs, strict=True)
    ]
