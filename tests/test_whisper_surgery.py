"""Whisper encoder surgery: adapter, sizes in the decoder's cross-attention, adjacent merging, baselines.

Fast tests use a tiny random WhisperConfig (50 encoder positions); the slow ones use the real
whisper-tiny-en of the zoo and real LibriVox speech (pocketsphinx-testdata).
"""

from __future__ import annotations

import copy
import math
import os
import re
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

import tokcomp
from tokcomp.analysis.flops import model_macs
from tokcomp.analysis.speech_baselines import (
    audio_tokens,
    truncated_window,
    uniform_groups,
    uniform_pooling,
    uniform_pooling_in_encoder,
)
from tokcomp.errors import RecipeError, TokcompError
from tokcomp.pipeline import apply_passes
from tokcomp.reducers.adjacent import AdjacentMerge, adjacent_matching
from tokcomp.reducers.rate import Rate
from tokcomp.surgery import capture_final_state, find_adapter
from tokcomp.surgery.adapters.whisper import SizedCrossAttention, split_size_bias
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

WINDOW = 50  # encoder positions of the tiny model (100 mel frames)
HIDDEN = 32


def tiny_config() -> WhisperConfig:
    return WhisperConfig(
        vocab_size=96,
        num_mel_bins=16,
        d_model=HIDDEN,
        encoder_layers=3,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=WINDOW,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )


@pytest.fixture(scope="module")
def original() -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_config()).eval()
    model.generation_config.max_length = 12
    return model


def features(batch: int, audible: list[int] | None = None, seed: int = 1) -> torch.Tensor:
    """Random log-mel features; `audible[b]` frames of sample b, the rest at the floor (padding's log-mel)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2 * WINDOW, generator=generator)
    if audible is not None:
        for b, frames in enumerate(audible):
            x[b, :, frames:] = x[b].min() - 1.0
    return x


def reduced(original, passes):
    model = copy.deepcopy(original)
    apply_passes(model, passes)
    return model


def encode(model, x):
    with torch.no_grad():
        return model.model.encoder(x).last_hidden_state


def transcribe(model, x, **kwargs):
    with torch.no_grad():
        return model.generate(x, max_new_tokens=8, do_sample=False, **kwargs)


# ---------------------------------------------------------------- the adapter


def test_zero_reduction_equals_the_original(original):
    model = reduced(original, [{"type": "adjacent_merge", "r": 0}])
    x = features(2)
    states = encode(model, x)
    assert states.shape == (2, WINDOW, HIDDEN + 1)
    plain, bias = split_size_bias(states, HIDDEN)
    assert (plain - encode(original, x)).abs().max() <= 1e-5
    assert torch.equal(bias, torch.zeros_like(bias))  # log(size 1)
    assert torch.equal(transcribe(model, x), transcribe(original, x))


def test_state_dict_keys_unchanged(original):
    model = reduced(original, [{"type": "adjacent_merge", "r": 5}])
    assert list(model.state_dict()) == list(original.state_dict())


def test_generate_with_kv_cache_matches_uncached(original):
    model = reduced(original, [{"type": "adjacent_merge", "r": 8}])
    x = features(2)
    cached = transcribe(model, x, use_cache=True)
    assert cached.shape[1] > 2
    assert torch.equal(cached, transcribe(model, x, use_cache=False))


@pytest.mark.parametrize(
    "passes",
    [
        {"type": "adjacent_merge", "r": 8},
        {"type": "adjacent_merge", "r": 20, "threshold": 0.2},
        {"type": "tome", "r": 8},
        {"type": "token_transform", "r": 8},
        {"type": "token_transform", "r": 8, "k": 2, "metric": "keys"},
        {"type": "zero_tprune", "r": 8},
    ],
    ids=lambda p: "-".join(str(v) for v in p.values()),
)
def test_tokens_stay_in_time_order_and_cover_the_window(original, passes):
    model = reduced(original, [passes])
    with torch.no_grad(), capture_final_state(model) as states:
        out = encode(model, features(3, [100, 40, 70]))
    state = states[0]
    real = state.real
    for b in range(3):
        positions = state.position[b][real[b]]
        assert (positions.diff() > 0).all()
    if passes["type"] != "zero_tprune":  # merging keeps every frame's mass; pruning drops some
        assert torch.allclose(state.weight().sum(dim=-1), torch.full((3,), float(WINDOW)))
    assert out.shape[1] < WINDOW


def test_cross_attention_sees_sizes_as_repeated_tokens(original):
    """Proportional attention over a token of size s equals attention over s identical copies of it."""
    model = reduced(original, [{"type": "adjacent_merge", "r": 10}])
    x = features(2)
    merged = encode(model, x)
    plain, bias = split_size_bias(merged, HIDDEN)
    sizes = bias.exp().round().long()
    assert sizes.sum(dim=-1).tolist() == [WINDOW, WINDOW] and (sizes > 1).any()
    expanded = torch.stack([plain[b].repeat_interleave(sizes[b], dim=0) for b in range(2)])
    ids = torch.tensor([[1, 5, 7, 9], [1, 3, 4, 8]])
    with torch.no_grad():
        with_sizes = model(encoder_outputs=(merged,), decoder_input_ids=ids).logits
        repeated = model(encoder_outputs=(expanded,), decoder_input_ids=ids).logits
    assert (with_sizes - repeated).abs().max() <= 1e-5


def test_proportional_pair_equals_two_identical_tokens(original):
    attention = SizedCrossAttention.adopt(original.model.decoder.layers[0].encoder_attn).eval()
    torch.manual_seed(3)
    queries, tokens = torch.randn(2, 3, HIDDEN), torch.randn(2, 6, HIDDEN)
    pair = torch.cat([tokens[:, :3], tokens[:, 2:]], dim=1)  # token 2 twice: identical keys and values
    merged = torch.cat([tokens, torch.zeros(2, 6, 1)], dim=-1)
    merged[:, 2, -1] = math.log(2.0)
    padded = torch.cat([merged, torch.zeros(2, 1, HIDDEN + 1)], dim=1)  # an empty row, masked
    padded[:, -1, :HIDDEN] = 100.0
    padded[:, -1, -1] = torch.finfo(torch.float32).min
    with torch.no_grad():
        expected = attention(queries, key_value_states=pair)[0]
        assert (attention(queries, key_value_states=merged)[0] - expected).abs().max() <= 1e-6
        assert (attention(queries, key_value_states=padded)[0] - expected).abs().max() <= 1e-6


def test_batch_invariance_with_different_clip_lengths(original):
    for passes in ({"type": "adjacent_merge", "r": 8}, {"type": "adjacent_merge", "r": 20, "threshold": 0.9}):
        model = reduced(original, [passes])
        x = features(3, [100, 30, 64])
        batch, lengths = encode(model, x), set()
        for b in range(3):
            alone = encode(model, x[b : b + 1])
            lengths.add(alone.shape[1])
            assert (batch[b, : alone.shape[1]] - alone[0]).abs().max() <= 1e-5
            assert (batch[b, alone.shape[1] :, -1] == torch.finfo(batch.dtype).min).all()  # empty rows, masked
        assert (len(lengths) > 1) == ("threshold" in passes)  # by threshold, counts follow the audio
    tokens = transcribe(model, x)  # the threshold model: every clip keeps its own token count
    for b in range(3):
        assert torch.equal(tokens[b], transcribe(model, x[b : b + 1])[0])


def test_adjacent_merge_is_deterministic(original):
    model = reduced(original, [{"type": "adjacent_merge", "r": 8}])
    x = features(2)
    assert torch.equal(encode(model, x), encode(model, x))


@pytest.mark.slow  # torch.export tracing takes tens of seconds on a shared CPU
@pytest.mark.heavy
def test_encoder_and_decoder_export_with_sizes_in_the_tensor(original):
    """No side channel: the reduced encoder and the size-reading decoder trace as plain graphs."""
    model = reduced(original, [{"type": "adjacent_merge", "r": 8}])
    x, ids = features(2), torch.tensor([[1, 5, 7], [1, 3, 4]])

    class Encoder(torch.nn.Module):
        def forward(self, features):
            return model.model.encoder(features).last_hidden_state

    class Decoder(torch.nn.Module):
        def forward(self, ids, states):
            return model(encoder_outputs=(states,), decoder_input_ids=ids, use_cache=False).logits

    states = encode(model, x)
    with torch.no_grad():
        encoder = torch.export.export(Encoder(), (x,)).module()
        assert (encoder(x) - states).abs().max() <= 1e-5
        decoder = torch.export.export(Decoder(), (ids, states)).module()
        assert (decoder(ids, states) - Decoder()(ids, states)).abs().max() <= 1e-5


# ---------------------------------------------------------------- the adjacent rule


def _run_adjacent(metric: torch.Tensor, rate: Rate, threshold=None):
    """Merge one sample whose token i holds value i; returns the groups as lists of input tokens."""
    tokens = metric.shape[1]
    x = torch.arange(tokens, dtype=torch.float32)[None, :, None]
    real = torch.ones(1, tokens, dtype=torch.bool)
    state = TokenState.initial(x, real, 0, trace_source=True)
    key = metric[:, None]  # one head
    _, new = AdjacentMerge(rate, 0, threshold)(x, state, AttentionInfo(key, key, None, 1.0))
    groups = [torch.nonzero(row).flatten().tolist() for row, r in zip(new.source[0], new.real[0]) if r]
    return groups, new


def test_adjacent_groups_are_contiguous_runs_of_at_most_three():
    torch.manual_seed(0)
    metric = torch.randn(1, 21, 8)
    groups, state = _run_adjacent(metric, Rate(8, 21))
    assert len(groups) == 21 - 8
    assert [i for g in groups for i in g] == list(range(21))  # every token once, in time order
    assert all(g == list(range(g[0], g[0] + len(g))) and len(g) <= 3 for g in groups)
    assert state.size[0, : len(groups)].tolist() == [float(len(g)) for g in groups]


def on_circle(*angles: float) -> torch.Tensor:
    """Keys at these angles (radians) on the unit circle: cosine similarity = cos(angle gap)."""
    angles = torch.tensor(angles)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)[None]


def test_adjacent_merge_picks_the_most_similar_neighbours():
    # Gaps 0.1, 0.15, 0.05, 1.2, 1.0, 0.05, 0.45: A tokens 2 -> 3, 6 -> 5 and 0 -> 1 score best.
    groups, _ = _run_adjacent(on_circle(0, 0.1, 0.25, 0.3, 1.5, 2.5, 2.55, 3.0), Rate(3, 8))
    assert groups == [[0, 1], [2, 3], [4], [5, 6], [7]]
    # Tokens 0 and 2 both closest to token 1: an A-B-A group of three consecutive tokens.
    groups, _ = _run_adjacent(on_circle(0, 0.1, 0.2, 1.5, 3.0), Rate(2, 5))
    assert groups == [[0, 1, 2], [3], [4]]


def test_adjacent_threshold_merges_only_similar_pairs_up_to_the_cap():
    threshold = math.cos(0.1)
    groups, _ = _run_adjacent(on_circle(0, 0.05, 1, 2, 2.9, 4), Rate(3, 6), threshold=threshold)
    assert groups == [[0, 1], [2], [3], [4], [5]]
    groups, _ = _run_adjacent(on_circle(0, 0, 0, 0, 0, 0), Rate(1, 6), threshold=threshold)
    assert len(groups) == 5  # all alike: the cap (1 token) decides


def test_adjacent_matching_prefers_the_left_neighbour_on_ties():
    metric = torch.nn.functional.normalize(torch.ones(1, 5, 4), dim=-1)
    real = torch.ones(1, 5, dtype=torch.bool)
    matching = adjacent_matching(metric, TokenState.initial(metric, real, 0, False))
    assert matching.partner.tolist() == [[0, 0, 1]]  # token 0: only a right neighbour; 2 and 4: left


def test_adjacent_threshold_out_of_range():
    with pytest.raises(TokcompError, match="not a cosine similarity"):
        AdjacentMerge(Rate(1, 4), 0, threshold=1.5)


# ---------------------------------------------------------------- refusals, budgets


@pytest.mark.parametrize(
    "passes",
    [
        {"type": "prune", "r": 4},
        {"type": "evit", "r": 4},
        {"type": "token_transform", "r": 4, "target_selection": "cls_attention"},
        {"type": "diffrate", "schedule": {"prune": [50, 45, 40], "merge": [50, 45, 40]}},
    ],
    ids=lambda p: p["type"] + ("-cls" if "target_selection" in p else ""),
)
def test_cls_ranked_reducers_refuse_a_model_without_cls(original, passes):
    with pytest.raises(RecipeError, match="no CLS token") as error:
        apply_passes(copy.deepcopy(original), [passes])
    assert "\n" not in str(error.value) and "adjacent_merge" in error.value.hint


def test_target_flops_counts_the_encoder(original):
    model = copy.deepcopy(original)
    record = apply_passes(model, [{"type": "adjacent_merge", "target_flops": "-30%"}])[0]
    adapter = find_adapter(original)
    geometry = adapter.geometry(original, adapter.default_input(original))
    dense = model_macs(geometry, [WINDOW] * 3)
    assert record.metadata["input_tokens"] == WINDOW
    assert abs(record.metadata["gmacs"] * 1e9 / dense - 0.7) < 0.08
    assert geometry.embed_macs == 2 * WINDOW * HIDDEN * 16 * 3 + WINDOW * HIDDEN * HIDDEN * 3


def test_other_window_lengths_are_refused(original):
    with pytest.raises(RecipeError, match="always takes its 50-token window"):
        apply_passes(copy.deepcopy(original), [{"type": "adjacent_merge", "r": 4}], sequence_length=30)


# ---------------------------------------------------------------- baselines


def test_uniform_groups_are_contiguous_and_even():
    real = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    groups = uniform_groups(real, torch.tensor([4, 3]))
    assert groups[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert groups[1].tolist() == [0, 0, 0, 1, 1, 2, 2, 10, 10, 10]


def test_uniform_pooling_of_the_output(original):
    model = uniform_pooling(original, 12)
    x = features(2)
    states = encode(model, x)
    plain, bias = split_size_bias(states, HIDDEN)
    assert states.shape[1] == 12 and torch.equal(bias.exp().round().sum(dim=-1), torch.tensor([50.0, 50.0]))
    full = encode(original, x)
    sizes = bias[0].exp().round().long().tolist()
    assert (plain[0, 0] - full[0, : sizes[0]].mean(dim=0)).abs().max() <= 1e-5
    assert transcribe(model, x).shape[0] == 2


def test_uniform_pooling_in_encoder_keeps_the_counts(original):
    model = uniform_pooling_in_encoder(original, [40, 25, 12])
    with torch.no_grad(), capture_final_state(model) as states:
        out = encode(model, features(2))
    assert out.shape[1] == 12 and (states[0].position.diff(dim=-1) > 0).all()
    with pytest.raises(TokcompError, match="3 encoder blocks"):
        uniform_pooling_in_encoder(original, [40, 25])


def test_truncated_window(original):
    x = features(3, [100, 30, 61])
    assert audio_tokens(x).tolist() == [50, 15, 31]
    whole = truncated_window(original, audio_ctx=WINDOW)
    assert (split_size_bias(encode(whole, x), HIDDEN)[0] - encode(original, x)).abs().max() <= 1e-5
    model = truncated_window(original)
    states = encode(model, x)
    plain, bias = split_size_bias(states, HIDDEN)
    assert states.shape[1] == 50 and (bias[1, 15:] == torch.finfo(bias.dtype).min).all() and (bias[1, :15] == 0).all()
    alone = truncated_window(original, audio_ctx=15)
    assert (plain[1, :15] - split_size_bias(encode(alone, x[1:2]), HIDDEN)[0][0]).abs().max() <= 1e-5
    tokens = transcribe(model, x)
    assert torch.equal(tokens[1], transcribe(alone, x[1:2])[0])
    with pytest.raises(TokcompError, match="outside the encoder window"):
        truncated_window(original, audio_ctx=0)


# ---------------------------------------------------------------- checkpoint


def test_compile_and_load_a_whisper_checkpoint(original, tmp_path, capsys, monkeypatch):
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe

    folder = tmp_path / "tiny-whisper"
    original.save_pretrained(folder)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {folder}\npasses:\n  - type: adjacent_merge\n    target_flops: '-30%'\n")
    monkeypatch.setenv("TOKCOMP_QUIET", "0")
    out = compile_recipe(load_recipe(recipe), tmp_path / "out")
    assert "fidelity: not measured at compile time: the speech model has no processor" in capsys.readouterr().err
    loaded = tokcomp.load(out)
    assert isinstance(loaded, WhisperForConditionalGeneration)
    in_memory = reduced(original, [{"type": "adjacent_merge", "target_flops": "-30%"}])
    x = features(2)
    assert torch.equal(encode(loaded, x), encode(in_memory, x))
    assert torch.equal(transcribe(loaded, x), transcribe(in_memory, x))
    state = tokcomp.checkpoint.read_state(out)
    assert state.input.modality == "audio" and state.input.sequence_length == WINDOW


# ---------------------------------------------------------------- real model, real speech

ZOO_WHISPER = Path.home() / ".cache" / "tokcomp" / "zoo" / "whisper-tiny-en"


def librivox_clips() -> list[tuple[np.ndarray, str]]:
    """The LibriVox clips of pocketsphinx-testdata: $TOKCOMP_TEST_POCKETSPHINX or the Debian install path."""
    roots = [os.environ.get("TOKCOMP_TEST_POCKETSPHINX", ""), "/usr/share/pocketsphinx/test/data"]
    root = next((Path(r) for r in roots if r and (Path(r) / "librivox" / "transcription").is_file()), None)
    if root is None:
        pytest.skip("pocketsphinx-testdata not found (set TOKCOMP_TEST_POCKETSPHINX to its test/data folder)")
    clips = []
    for line in (root / "librivox" / "transcription").read_text().splitlines():
        text, name = re.match(r"<s> (.*) </s> \((.*)\)", line).groups()
        with wave.open(str(root / "librivox" / f"{name}.wav")) as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        clips.append((audio, text))
    return clips


@pytest.fixture(scope="module")
def real():
    if not (ZOO_WHISPER / "zoo.json").is_file():
        pytest.skip("zoo:whisper-tiny-en is not built")
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(ZOO_WHISPER)
    model = WhisperForConditionalGeneration.from_pretrained(ZOO_WHISPER).eval()
    clips = librivox_clips()
    inputs = processor([a for a, _ in clips], sampling_rate=16000, return_tensors="pt").input_features
    return model, processor, inputs


def _texts(model, processor, inputs):
    with torch.inference_mode():
        return processor.batch_decode(model.generate(inputs, max_new_tokens=96), skip_special_tokens=True)


@pytest.mark.slow
def test_real_zero_reduction_is_exact(real):
    model, processor, inputs = real
    rewritten = reduced(model, [{"type": "adjacent_merge", "r": 0}])
    with torch.inference_mode():
        diff = split_size_bias(encode(rewritten, inputs), 384)[0] - encode(model, inputs)
    assert diff.abs().max() <= 1e-5
    assert _texts(rewritten, processor, inputs) == _texts(model, processor, inputs)


@pytest.mark.slow
@pytest.mark.heavy
def test_real_adjacent_merge_compiles_and_transcribes(real, tmp_path):
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe

    model, processor, inputs = real
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {ZOO_WHISPER}\npasses:\n  - type: adjacent_merge\n    target_flops: '-50%'\n")
    out = compile_recipe(load_recipe(recipe), tmp_path / "out")
    report = tokcomp.fileio.read_json(out / "report.json")
    assert 0.45 <= report["flops"]["ratio"] <= 0.55
    compressed = tokcomp.load(out)
    texts, original = _texts(compressed, processor, inputs), _texts(model, processor, inputs)
    assert _word_error_rate(original, texts) <= 0.15, (texts, original)  # half the encoder FLOPs, few words lost


def _word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English normaliser (word edit distance / reference words)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    normalise = EnglishTextNormalizer({})
    edits = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
        row = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, h in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
        edits, words = edits + row[-1], words + len(ref)
    return edits / words
