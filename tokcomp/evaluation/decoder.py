"""Long-prompt evaluation of a compressed decoder LLM against its original (`tokcomp eval` on a decoder checkpoint).

- needle retrieval (evaluation/needle.py): exact digits of the greedy continuation, per
  (length, depth), original and compressed on the same prompts;
- continuation fidelity after a long prose prompt: the original's greedy continuation of
  `continuation` tokens is teacher-forced through both models (prompt prefilled, and reduced,
  alone; the continuation then read through the KV cache); KL(original || compressed) and top-1
  agreement of those next-token distributions, plus greedy agreement (the share of the
  original's greedy tokens the compressed model reproduces before it first differs);
- cost: time to first token (prefill + first token), decoding speed (tokens/s over the
  continuation), KV-cache bytes after prefill (every key and value tensor of the DynamicCache),
  and peak memory of the prefill: on CUDA torch's peak allocation over the call; on CPU the peak
  resident set size over the call minus the resident size at its start, read from
  /proc/self/statm every millisecond by a thread after handing freed heap back (malloc_trim).
  Original and compressed are timed alternately, repeat after repeat, and the medians reported
  with the machine's load average before and after.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError
from tokcomp.evaluation import needle
from tokcomp.surgery.adapters.decoder import cache_keyword

RESULT_KIND = "tokcomp-eval"
DECODER_CLASSES = ("Gemma3ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


class DecoderEvalError(TokcompError):
    """A decoder evaluation that cannot run as asked."""


@dataclass
class DecoderEvalConfig:
    lengths: Sequence[int] = (1024, 2048)  # needle prompt lengths (tokens)
    depths: Sequence[float] = needle.DEFAULT_DEPTHS
    samples: int = 2  # needle prompts per (length, depth)
    keys: int = 1  # facts planted per needle prompt
    fidelity_length: int = 1024  # prose prompt tokens before the scored continuation
    fidelity_samples: int = 2
    continuation: int = 32  # tokens scored after the prompt
    timing_repeats: int = 3  # 0: no timing
    seed: int = 0


# ------------------------------------------------------------------ cache and memory accounting


def kv_cache_bytes(cache) -> int:
    """Bytes held by every key and value tensor of a transformers cache (all layers)."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def cache_lengths(cache) -> list[int]:
    """Entries cached per layer."""
    return [
        int(layer.keys.shape[-2]) if isinstance(getattr(layer, "keys", None), Tensor) else 0 for layer in cache.layers
    ]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may include freed heap (peak under-reads)
        pass


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int | None, str]:
    """(fn(), peak bytes above the start, how it was measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - start, "cuda max_memory_allocated"
    if not os.path.exists("/proc/self/statm"):
        return fn(), None, "unavailable (no /proc)"
    _trim_heap()
    start = _resident_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _resident_bytes())
    return out, peak[0] - start, "peak RSS minus RSS at start (/proc/self/statm, 1 ms)"


# ------------------------------------------------------------------ running a model


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cache(model: nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@torch.no_grad()
def prefill(model: nn.Module, ids: Tensor):
    """(last-row logits [V], filled cache) for one prompt [1, N]."""
    cache = _cache(model)
    mask = torch.ones_like(ids)
    # Only the last row's logits: a 262k-token vocabulary makes every row's cost more than the layers'.
    cache_argument = {cache_keyword(model): cache}
    out = model(input_ids=ids, attention_mask=mask, **cache_argument, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], cache


@torch.no_grad()
def greedy_tokens(model: nn.Module, ids: Tensor, new_tokens: int) -> list[int]:
    """Greedy continuation (exactly `new_tokens`, no early stop) of one prompt [1, N]."""
    logits, cache = prefill(model, ids)
    tokens = [int(logits.argmax())]
    length = ids.shape[1]
    key = cache_keyword(model)  # looked up once, not per generated token
    for step in range(new_tokens - 1):
        mask = torch.ones(1, length + step + 1, dtype=torch.long, device=ids.device)
        token = torch.tensor([[tokens[-1]]], device=ids.device)
        out = model(input_ids=token, attention_mask=mask, **{key: cache}, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


@torch.no_grad()
def teacher_forced_logits(model: nn.Module, ids: Tensor, continuation: Sequence[int]) -> Tensor:
    """Next-token logits [len(continuation), V]: the prompt prefilled alone, then continuation[:-1] through the cache."""
    first, cache = prefill(model, ids)
    if len(continuation) == 1:
        return first[None]
    rest = torch.tensor([list(continuation[:-1])], device=ids.device)
    mask = torch.ones(1, ids.shape[1] + rest.shape[1], dtype=torch.long, device=ids.device)
    out = model(input_ids=rest, attention_mask=mask, **{cache_keyword(model): cache}, use_cache=True)
    return torch.cat([first[None], out.logits[0]])


def distribution_fidelity(original: Tensor, compressed: Tensor) -> dict[str, float]:
    """KL(original || compressed) in nats (mean over positions) and top-1 agreement, logits [T, V]."""
    log_p, log_q = original.float().log_softmax(-1), compressed.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0)
    agree = (original.argmax(-1) == compressed.argmax(-1)).float()
    return {"kl": kl.mean().item(), "top1_agreement": agree.mean().item(), "positions": int(agree.numel())}


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ------------------------------------------------------------------ the three measurements


def prose_prompts(tokenizer, length: int, count: int, seed: int, sentences: Sequence[str] | None = None) -> list[str]:
    """`count` prose prompts of at most `length` tokens (whole sentences) from seeded places of the held-out prose."""
    import random

    sentences = list(sentences) if sentences is not None else needle.held_out_sentences()
    rng = random.Random(needle.hash_seed("prose", seed, length))
    out = []
    for _ in range(count):
        start, text, pieces = rng.randrange(len(sentences)), "", []
        while True:
            pieces.append(sentences[(start + len(pieces)) % len(sentences)])
            candidate = " ".join(pieces)
            if len(tokenizer(candidate).input_ids) > length or len(pieces) > len(sentences):
                break
            text = candidate
        out.append(text)
    return out


def needle_run(model: nn.Module, tokenizer, samples: Sequence[needle.NeedleSample]) -> list[dict]:
    """Each sample's greedy continuation and whether it starts with the answer."""
    device = _device(model)
    out = []
    for sample in samples:
        ids = tokenizer(sample.prompt, return_tensors="pt").input_ids.to(device)
        text = tokenizer.decode(greedy_tokens(model, ids, needle.ANSWER_TOKENS), skip_special_tokens=True)
        out.append({"continuation": text, "correct": needle.is_correct(sample, text)})
    return out


def fidelity_run(original: nn.Module, compressed: nn.Module, tokenizer, prompts: Sequence[str], continuation: int):
    """Per prompt: KL / top-1 on the original's greedy continuation, and greedy agreement."""
    device = _device(original)
    rows = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
        reference = greedy_tokens(original, ids, continuation)
        scores = distribution_fidelity(
            teacher_forced_logits(original, ids, reference), teacher_forced_logits(compressed, ids, reference)
        )
        own = greedy_tokens(compressed, ids, continuation)
        scores["greedy_agreement"] = common_prefix(reference, own) / continuation
        scores["prompt_tokens"] = int(ids.shape[1])
        rows.append(scores)
    return rows


def _summary(rows: Sequence[dict]) -> dict[str, float]:
    keys = ("kl", "top1_agreement", "greedy_agreement")
    return {k: statistics.fmean(r[k] for r in rows) for k in keys} | {"samples": len(rows)}


@dataclass
class CostSample:
    ttft_s: list[float] = field(default_factory=list)
    decode_tokens_per_s: list[float] = field(default_factory=list)
    kv_cache_bytes: int = 0
    cache_lengths: list[int] = field(default_factory=list)
    peak_prefill_bytes: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def median(xs):
            return statistics.median(xs) if xs else None

        return {
            "ttft_s": median(self.ttft_s),
            "decode_tokens_per_s": median(self.decode_tokens_per_s),
            "kv_cache_bytes": self.kv_cache_bytes,
            "cache_lengths": self.cache_lengths,
            "peak_prefill_bytes": median(self.peak_prefill_bytes),
            "repeats": len(self.ttft_s),
        }


@torch.no_grad()
def _timed_once(model: nn.Module, ids: Tensor, new_tokens: int, record: CostSample) -> None:
    device = _device(model)

    def first_token():
        logits, cache = prefill(model, ids)
        return int(logits.argmax()), cache

    _sync(device)
    started = time.perf_counter()
    (token, cache), peak, _ = peak_memory(first_token, device)
    _sync(device)
    record.ttft_s.append(time.perf_counter() - started)
    if peak is not None:
        record.peak_prefill_bytes.append(peak)
    record.kv_cache_bytes, record.cache_lengths = kv_cache_bytes(cache), cache_lengths(cache)
    length = ids.shape[1]
    key = cache_keyword(model)  # looked up before the clock starts
    started = time.perf_counter()
    for step in range(new_tokens):
        mask = torch.ones(1, length + step + 1, dtype=torch.long, device=device)
        step_ids = torch.tensor([[token]], device=device)
        out = model(input_ids=step_ids, attention_mask=mask, **{key: cache}, use_cache=True)
        token = int(out.logits[0, -1].argmax())
    _sync(device)
    record.decode_tokens_per_s.append(new_tokens / (time.perf_counter() - started))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_costs(models: dict[str, nn.Module], ids: Tensor, repeats: int, new_tokens: int) -> dict[str, dict]:
    """Median TTFT / decoding speed / peak over `repeats`, the models taking turns (one warm-up turn first)."""
    records = {name: CostSample() for name in models}
    for name, model in models.items():  # warm-up: first-call allocations and lazy initialisation
        _timed_once(model, ids, 2, CostSample())
    for _ in range(repeats):
        for name, model in models.items():
            _timed_once(model, ids, new_tokens, records[name])
    return {name: record.summary() for name, record in records.items()}


def machine_load() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "load_average_1_5_15": [round(x, 2) for x in load],
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------ the whole evaluation


def evaluate_models(
    original: nn.Module, compressed: nn.Module, tokenizer, config: DecoderEvalConfig, progress=None
) -> dict[str, Any]:
    """Needle accuracy, continuation fidelity and cost of `compressed` against `original` (both causal LMs)."""
    say = progress or (lambda message: None)
    say(f"building needle prompts {list(config.lengths)} x depths {list(config.depths)}")
    samples = needle.build_samples(tokenizer, config.lengths, config.depths, config.samples, config.keys, config.seed)
    result: dict[str, Any] = {"haystack": needle.HAYSTACK_SOURCE, "keys": config.keys}
    runs = {}
    for name, model in (("original", original), ("compressed", compressed)):
        say(f"needle: {len(samples)} prompts on the {name} model")
        runs[name] = needle_run(model, tokenizer, samples)
    result["needle"] = {
        name: {
            "accuracy": needle.overall_accuracy([r["correct"] for r in run]),
            "cells": needle.accuracy_table(samples, [r["correct"] for r in run]),
        }
        for name, run in runs.items()
    }
    result["needle"]["prompts"] = [
        {**{k: s.as_dict()[k] for k in ("length", "depth", "seed", "tokens", "needle_token", "answer")},
         "original": runs["original"][i]["continuation"], "compressed": runs["compressed"][i]["continuation"]}
        for i, s in enumerate(samples)
    ]  # fmt: skip
    say(f"continuation fidelity: {config.fidelity_samples} prose prompts of {config.fidelity_length} tokens")
    prompts = prose_prompts(tokenizer, config.fidelity_length, config.fidelity_samples, config.seed)
    rows = fidelity_run(original, compressed, tokenizer, prompts, config.continuation)
    result["fidelity"] = {**_summary(rows), "continuation": config.continuation, "per_prompt": rows}
    if config.timing_repeats:
        say(f"cost: {config.timing_repeats} interleaved repeats at {config.fidelity_length} tokens")
        ids = tokenizer(prompts[0], return_tensors="pt").input_ids.to(_device(original))
        load_before = machine_load()
        costs = interleaved_costs(
            {"original": original, "compressed": compressed}, ids, config.timing_repeats, config.continuation
        )
        result["cost"] = {
            "prompt_tokens": int(ids.shape[1]),
            "new_tokens": config.continuation,
            **costs,
            "peak_memory_measure": peak_memory(lambda: None, _device(original))[2],
            "machine_before": load_before,
            "machine_after": machine_load(),
        }
    result["flags"] = flags(result)
    return result


def flags(result: dict[str, Any]) -> list[str]:
    """What a reader must not miss: the compressed model doing worse than the original, cell by cell."""
    out = []
    needles = result.get("needle")
    if needles:
        original = {(c["length"], c["depth"]): c for c in needles["original"]["cells"]}
        for cell in needles["compressed"]["cells"]:
            ref = original[(cell["length"], cell["depth"])]
            if cell["correct"] < ref["correct"]:
                out.append(
                    f"needle at {cell['length']} tokens, depth {cell['depth']}: compressed {cell['correct']}/"
                    f"{cell['n']} vs original {ref['correct']}/{ref['n']}"
                )
        if needles["original"]["accuracy"] < 1.0:
            out.append(
                f"the original model itself misses needles (accuracy {needles['original']['accuracy']:.2f}): "
                "these prompts are too hard for it, compare cells, not totals"
            )
    fidelity = result.get("fidelity")
    if fidelity and fidelity["top1_agreement"] < 0.9:
        out.append(f"continuation top-1 agreement {fidelity['top1_agreement']:.3f} < 0.9 (KL {fidelity['kl']:.3f})")
    if fidelity and fidelity["greedy_agreement"] < 0.5:
        out.append(f"greedy generation follows the original for only {fidelity['greedy_agreement']:.0%} of the tokens")
    return out


def is_decoder_checkpoint(path: str | Path) -> bool:
    """A checkpoint of a causal decoder LM (what this evaluation scores)."""
    from tokcomp.checkpoint import read_state

    return read_state(Path(path)).base.class_name in DECODER_CLASSES


def evaluate_decoder_checkpoint(path: str | Path, config: DecoderEvalConfig, progress=None) -> dict[str, Any]:
    """Everything `tokcomp eval` writes for a decoder checkpoint."""
    from tokcomp.evaluation.models import open_models

    started = time.perf_counter()
    models = open_models(path, with_original=True)
    if models.processor is None:
        raise DecoderEvalError(
            f"{path} holds no tokenizer", hint="compile the checkpoint from a model folder that has its tokenizer"
        )
    result = evaluate_models(models.original, models.compressed, models.processor, config, progress)
    return {
        "kind": RESULT_KIND,
        "task": "decoder-long-prompt",
        "checkpoint": str(Path(path).resolve()),
        "model": models.state.base.source,
        "passes": [p.name for p in models.state.passes],
        "config": asdict(config) | {"lengths": list(config.lengths), "depths": list(config.depths)},
        **result,
        "seconds": round(time.perf_counter() - started, 2),
    }


# ------------------------------------------------------------------ the table a person reads


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f} MiB"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(metric, original, compressed, flagged) rows: flagged rows are worse than the original."""
    rows = []
    needles = result["needle"]
    original = {(c["length"], c["depth"]): c for c in needles["original"]["cells"]}
    for cell in needles["compressed"]["cells"]:
        ref = original[(cell["length"], cell["depth"])]
        rows.append((
            f"needle {cell['length']} tok, depth {cell['depth']} (n={cell['n']})",
            f"{ref['correct']}/{ref['n']}", f"{cell['correct']}/{cell['n']}", cell["correct"] < ref["correct"],
        ))  # fmt: skip
    n_o, n_c = needles["original"]["accuracy"], needles["compressed"]["accuracy"]
    rows.append(("needle accuracy (all)", _pct(n_o), _pct(n_c), n_c < n_o))
    fid = result["fidelity"]
    rows.append((f"KL(original || compressed), next {fid['continuation']}", "0", f"{fid['kl']:.4f}", False))
    rows.append(("top-1 agreement", "100%", _pct(fid["top1_agreement"]), fid["top1_agreement"] < 0.9))
    rows.append(("greedy agreement (prefix)", "100%", _pct(fid["greedy_agreement"]), fid["greedy_agreement"] < 0.5))
    if cost := result.get("cost"):
        o, c = cost["original"], cost["compressed"]
        rows.append((f"time to first token ({cost['prompt_tokens']} tok, median)", f"{o['ttft_s']:.3f} s",
                     f"{c['ttft_s']:.3f} s", False))  # fmt: skip
        rows.append(("decoding speed", f"{o['decode_tokens_per_s']:.1f} tok/s", f"{c['decode_tokens_per_s']:.1f} tok/s",
                     False))  # fmt: skip
        rows.append(("KV cache after prefill", _mib(o["kv_cache_bytes"]), _mib(c["kv_cache_bytes"]), False))
        rows.append(("peak prefill memory", _mib(o["peak_prefill_bytes"]), _mib(c["peak_prefill_bytes"]), False))
    return rows
