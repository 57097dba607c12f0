"""`rates: learned` on merging passes: per-block counts searched at the FLOPs target, scored by KL on
the original's teacher-forced transcripts (calibrate/learned_rates.py, calibrate/speech.py).

Fast tests run a tiny random Whisper on synthetic audio; the slow one compiles the real
zoo:whisper-tiny-en on the calibration split of the zoo's English telephone prompts.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_whisper_surgery import WINDOW, tiny_config
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

import tokcomp
from tokcomp.analysis.flops import model_macs
from tokcomp.calibrate import speech
from tokcomp.calibrate.learned_rates import removals_for, starts
from tokcomp.calibrate.share_search import CUT_TOLERANCE, shares_of
from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.errors import RecipeError
from tokcomp.pipeline import apply_passes
from tokcomp.recipe import parse_pass_list
from tokcomp.surgery import find_adapter
from tokcomp.surgery.adapters.base import Geometry, InputSpec


def tiny_whisper() -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_config()).eval()
    model.generation_config.max_length = 12
    return model


def tiny_processor():
    """The tiny model's front end: 16 mel bins over a 1 s window (100 frames, 50 encoder positions)."""
    extractor = WhisperFeatureExtractor(feature_size=16, chunk_length=1, n_fft=400, hop_length=160)
    assert extractor.nb_max_frames == 2 * WINDOW
    return SimpleNamespace(feature_extractor=extractor)


def noise_clips(count: int) -> list[SpeechClip]:
    rng = np.random.default_rng(0)
    return [
        SpeechClip(f"noise-{i}", (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)) for i in range(count)
    ]


@pytest.fixture
def learned_on_noise(monkeypatch):
    """apply_passes with rates: learned on the tiny Whisper, calibrated on synthetic clips."""
    monkeypatch.setattr(speech, "calibration_clips", lambda model, data, count, seed: ("noise", noise_clips(count)))

    def run(passes, model=None):
        model = tiny_whisper() if model is None else model
        record = apply_passes(model, passes, processor=tiny_processor())[0]
        return model, record

    return run


def geometry(model) -> Geometry:
    return find_adapter(model).geometry(model, InputSpec("audio", sequence_length=WINDOW))


# ---------------------------------------------------------------- shares and starts


def test_removals_follow_the_shares_of_the_selected_blocks():
    # 10 tokens, 2 protected: 8 reducible; block 1 is not selected and removes nothing.
    assert removals_for([0.5, 0.25], [True, False, True], 10, 2) == [4, 0, 2]
    assert removals_for([1.0, 1.0], [True, True], 10, 0) == [0, 0]


def test_the_constant_r_start_is_the_constant_schedule():
    geo = geometry(tiny_whisper())
    shape = starts([5, 5, 5], [True] * 3, geo, 0)["constant r"]
    kept = [round(share * WINDOW) for share in shares_of(shape, 1.0)]
    assert kept == [45, 40, 35]


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "tome", "r": 4, "rates": "learned"}, "target_flops"),
        ({"type": "tome", "target_flops": "-30%", "search": {"clips": 4}}, "rates: learned only"),
        ({"type": "adjacent_merge", "target_flops": "-30%", "threshold": 0.9, "rates": "learned"}, "threshold"),
    ],
)
def test_bad_learned_rate_configs_are_refused(spec, message):
    with pytest.raises((RecipeError, ValidationError), match=message):
        parse_pass_list([spec])


def test_learned_rates_need_a_processor():
    with pytest.raises(RecipeError, match="processor"):
        apply_passes(tiny_whisper(), [{"type": "tome", "target_flops": "-30%", "rates": "learned"}])


def test_image_and_text_models_are_pointed_at_diffrate():
    from conftest import tiny_bert

    with pytest.raises(RecipeError, match="diffrate"):
        apply_passes(tiny_bert(), [{"type": "tome", "target_flops": "-30%", "rates": "learned"}], processor=object())


# ---------------------------------------------------------------- the score


def test_teacher_transcripts_are_the_originals_greedy_ones_and_score_zero():
    model, processor = tiny_whisper(), tiny_processor()
    clips = noise_clips(3)
    score = speech.TranscriptFidelity(model, processor, clips, max_new_tokens=6)
    features = processor.feature_extractor([c.audio for c in clips], sampling_rate=SAMPLE_RATE,
                                           return_tensors="pt").input_features  # fmt: skip
    with torch.inference_mode():
        generated = model.generate(features, do_sample=False, num_beams=1, max_new_tokens=6)
    # Each teacher sequence is the prompt, the transcript and its end; the original predicts it itself.
    prompt = speech.prompt_tokens(model, None)
    ((_, ids, positions, reference),) = score.batches
    for row, transcript in enumerate(score.transcripts):
        ended = [model.generation_config.eos_token_id] if len(transcript) < 6 else []
        assert ids[row, : len(prompt) + len(transcript) + len(ended)].tolist() == prompt + transcript + ended
        assert reference[row].argmax(-1).tolist()[: len(transcript)] == transcript
        assert len(positions[row]) == len(transcript) + len(ended)
    assert score.transcripts == [
        [token for token in row if token != model.generation_config.eos_token_id] for row in generated.tolist()
    ]
    assert score(model) == pytest.approx(0.0, abs=1e-6)
    reduced = copy.deepcopy(model)
    apply_passes(reduced, [{"type": "tome", "r": 12}])
    assert score(reduced) > 0


# ---------------------------------------------------------------- the search, end to end


def test_learned_rates_meet_the_target_and_score_no_worse_than_constant_r(learned_on_noise):
    search = {"clips": 3, "evaluations": 6, "max_new_tokens": 6}
    model, record = learned_on_noise([{"type": "tome", "target_flops": "-40%", "rates": "learned", "search": search}])
    report = record.metadata["report"]
    assert abs(report["achieved_cut"] / 0.4 - 1) <= CUT_TOLERANCE
    constant = next(c for c in report["candidates"] if c["kind"] == "constant r")
    assert report["kl"] == min(c["kl"] for c in report["candidates"]) <= constant["kl"]
    assert len(report["candidates"]) == 6 and report["calibration"]["clips"] == 3
    tokens = record.metadata["tokens_per_layer"]
    assert all(b <= a for a, b in zip([WINDOW, *tokens], tokens, strict=False))
    geo = geometry(model)
    assert record.metadata["gmacs"] == pytest.approx(model_macs(geo, tokens) / 1e9)
    # Recorded as r per block: an in-memory rebuild with that list is the same model.
    rebuilt = tiny_whisper()
    apply_passes(rebuilt, [{"type": "tome", "r": record.metadata["r_per_layer"]}])
    x = torch.randn(2, 16, 2 * WINDOW, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(model.model.encoder(x).last_hidden_state, rebuilt.model.encoder(x).last_hidden_state)


def test_the_learned_search_is_deterministic(learned_on_noise):
    spec = {"type": "adjacent_merge", "target_flops": "-30%", "rates": "learned",
            "search": {"clips": 2, "evaluations": 4, "max_new_tokens": 4}}  # fmt: skip
    first, second = learned_on_noise([spec])[1], learned_on_noise([spec])[1]
    assert first.metadata["r_per_layer"] == second.metadata["r_per_layer"]


# ---------------------------------------------------------------- compile-time fidelity of speech models


def test_compile_time_fidelity_of_a_speech_model_reads_transcripts(tmp_path):
    import wave

    from tokcomp.recipe import EvaluationSpec
    from tokcomp.report import _speech_fidelity
    from tokcomp.sources import LoadedModel

    for clip in noise_clips(3):
        with wave.open(str(tmp_path / f"{clip.name}.wav"), "wb") as out:
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(SAMPLE_RATE)
            out.writeframes((clip.audio * 32767).astype("<i2").tobytes())
    original = tiny_whisper()
    compressed = copy.deepcopy(original)
    apply_passes(compressed, [{"type": "tome", "r": 12}])
    loaded = LoadedModel(compressed, "tiny", "transformers", "Whisper", InputSpec("audio"), tiny_processor())
    spec = EvaluationSpec(data=str(tmp_path), samples=3)
    same = _speech_fidelity(original, LoadedModel(original, "tiny", "transformers", "Whisper", InputSpec("audio"),
                                                  tiny_processor()), spec, 0)  # fmt: skip
    assert same["samples"] == 3 and same["top1_agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0, abs=1e-6)
    assert same["below_threshold"] == {}
    reduced = _speech_fidelity(original, loaded, spec, 0)
    assert reduced["kl_mean"] > 0 and reduced["top1_agreement_min"] <= reduced["top1_agreement"]
    # A poor model is flagged: the random tiny decoder barely reads its encoder, so break its embeddings instead.
    torch.nn.init.normal_(
        compressed.model.decoder.embed_tokens.weight, std=5.0, generator=torch.Generator().manual_seed(1)
    )
    strict = EvaluationSpec(data=str(tmp_path), samples=3, warn_below={"top1_agreement": 0.99})
    poor = _speech_fidelity(original, loaded, strict, 0)
    assert poor["top1_agreement"] < 0.99 and poor["below_threshold"] == {"top1_agreement": poor["top1_agreement"]}


# ---------------------------------------------------------------- real model, real speech


@pytest.mark.slow
@pytest.mark.heavy  # a real compile with a search and a fidelity check: minutes on a shared 2-core machine
def test_real_whisper_compiles_with_learned_rates(tmp_path):
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe
    from tokcomp.zoo.speech import speech_clips

    try:
        calibration = speech_clips("asterisk-en", "calibration", limit=2)
    except tokcomp.errors.ZooError as exc:  # the Debian speech packages cannot be fetched here
        pytest.skip(f"zoo speech data unavailable: {exc}")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: zoo:whisper-tiny-en\npasses:\n  - type: tome\n    target_flops: '-50%'\n    rates: learned\n"
        "    search: {clips: 2, evaluations: 2, max_new_tokens: 16}\ncalibration:\n  data: zoo:asterisk-en\n"
        "evaluation:\n  samples: 3\n"
    )
    out = compile_recipe(load_recipe(recipe), tmp_path / "out")
    state = tokcomp.checkpoint.read_state(out)
    metadata = state.passes[0].metadata
    report = metadata["report"]
    assert report["calibration"] == {"data": "zoo:asterisk-en (calibration split)", "clips": 2, "max_new_tokens": 16}
    assert abs(report["achieved_cut"] / 0.5 - 1) <= CUT_TOLERANCE
    assert report["kl"] <= next(c["kl"] for c in report["candidates"] if c["kind"] == "constant r")
    # Compile-time fidelity: the original's transcripts of evaluation clips (never the calibration ones).
    fidelity = tokcomp.fileio.read_json(out / "report.json")["fidelity"]
    assert fidelity["samples"] == 3 and "evaluation split" in fidelity["data"]
    assert 0 <= fidelity["top1_agreement_min"] <= fidelity["top1_agreement"] <= 1 and fidelity["kl_mean"] >= 0
    assert "top-1 agreement" in (out / "README.md").read_text()
    loaded = tokcomp.load(out)
    features = torch.zeros(1, 80, 3000)
    with torch.inference_mode():
        states = loaded.model.encoder(features).last_hidden_state
    assert states.shape[1] == metadata["tokens_per_layer"][-1]
    assert len(calibration) == 2
