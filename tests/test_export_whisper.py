"""Whisper export: the compressed encoder and the cached decoder as ONNX, and greedy transcription on ONNX Runtime.

Fast tests use a tiny random Whisper (tests/test_whisper_surgery.py's config, larger initial weights
so greedy decoding varies with the input); the heavy ones export it in full, and zoo:whisper-tiny-en
with real speech from the zoo's evaluation clips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_whisper_surgery import HIDDEN, WINDOW, features, tiny_config
from transformers import WhisperForConditionalGeneration

import tokcomp
from tokcomp.errors import TokcompError
from tokcomp.export import export_checkpoint
from tokcomp.export.io_spec import io_spec
from tokcomp.pipeline import apply_passes
from tokcomp.runtime.onnx_whisper import prompt_ids, transcribe_onnx

MEL_BINS = 16
TOME = {"type": "tome", "target_flops": "-30%"}


def tiny_whisper() -> WhisperForConditionalGeneration:
    config = tiny_config()
    config.init_std = 0.5  # at the default 0.02 a random decoder repeats one token whatever it hears
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config.suppress_tokens = [5, 17]  # exercised by the ONNX Runtime loop as by generate
    model.generation_config.begin_suppress_tokens = [12]
    return model


def compile_tiny(tmp_path: Path, passes: str) -> Path:
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe

    tiny_whisper().save_pretrained(tmp_path / "tiny-whisper")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tmp_path / 'tiny-whisper'}\npasses:\n{passes}")
    return compile_recipe(load_recipe(recipe), tmp_path / "out")


def generated(model, x: torch.Tensor, max_new_tokens: int, **options) -> list[list[int]]:
    """PyTorch greedy generate, as per-clip token lists (generate pads finished clips with pad_token_id)."""
    with torch.inference_mode():
        ids = model.generate(x, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **options)
    pad = model.generation_config.pad_token_id
    rows = []
    for row in ids.tolist():
        while row and row[-1] == pad:
            row.pop()
        rows.append(row)
    return rows


# ---------------------------------------------------------------- fast: spec, prompt, refusals


def test_audio_io_spec_is_the_encoder_window():
    model = tiny_whisper()
    apply_passes(model, [TOME])
    spec = io_spec(model, "transformers", "audio", None, WINDOW)
    assert spec.task == "automatic-speech-recognition"
    assert spec.input_names == ("input_features",) and spec.output_names == ("last_hidden_state",)
    assert spec.dynamic_axes() == {"input_features": {0: "batch_size"}}
    x = spec.dummy_inputs(3, seed=7)["input_features"]
    assert x.shape == (3, MEL_BINS, 2 * WINDOW) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x, spec.dummy_inputs(3, seed=7)["input_features"])


def test_threshold_merging_is_refused_with_the_fix(tmp_path):
    out = compile_tiny(tmp_path, "  - type: adjacent_merge\n    r: 8\n    threshold: 0.9\n")
    with pytest.raises(TokcompError) as error:
        export_checkpoint(out, "onnx")
    message = str(error.value)
    assert "threshold" in message and "static" in message and "target_flops" in message
    assert "\n" not in message
    assert not list(out.glob("*.onnx"))


@pytest.mark.parametrize("fmt", ["onnx-tokcomp", "onnx-tensorrt", "tensorrt", "aoti"])
def test_other_formats_are_refused_for_speech(tmp_path, fmt):
    out = compile_tiny(tmp_path, "  - type: tome\n    r: 4\n")
    with pytest.raises(TokcompError, match=f"--format {fmt} is not supported for speech checkpoints.*--format onnx"):
        export_checkpoint(out, fmt)


def test_prompt_matches_transformers_rules():
    english = {"decoder_start_token_id": 50257, "no_timestamps_token_id": 50362}
    assert prompt_ids(english) == prompt_ids(english, "en", "transcribe") == [50257, 50362]
    with pytest.raises(TokcompError, match="English-only"):
        prompt_ids(english, "fr")
    multi = {
        "decoder_start_token_id": 50258,
        "no_timestamps_token_id": 50363,
        "lang_to_id": {"<|en|>": 50259, "<|fr|>": 50265},
        "task_to_id": {"transcribe": 50359, "translate": 50358},
    }
    assert prompt_ids(multi, "fr") == [50258, 50265, 50359, 50363]  # a language alone transcribes
    assert prompt_ids(multi, "en", "translate") == [50258, 50259, 50358, 50363]
    assert prompt_ids(multi) == [50258, None, 50363]  # the language is detected per clip, no task token
    with pytest.raises(TokcompError, match="no language 'xx'"):
        prompt_ids(multi, "xx")
    legacy = english | {"forced_decoder_ids": [[1, 50362]]}
    assert prompt_ids(legacy) == [50257, 50362]


def test_encoder_exports_and_validates(tmp_path):
    """The encoder graph alone (the part every format shares): static window, size channel, ORT == PyTorch."""
    from tokcomp.export.artifacts import open_subject
    from tokcomp.export.onnx_export import export_onnx
    from tokcomp.export.validate import validate_onnx

    out = compile_tiny(tmp_path, "  - type: tome\n    r: 4\n")
    subject = open_subject(out)
    assert subject.output_shapes == {"last_hidden_state": [WINDOW - 3 * 4, HIDDEN + 1]}
    path = tmp_path / "encoder.onnx"
    import onnx

    onnx.save_model(export_onnx(subject.wrapper, subject.spec, "portable"), str(path))
    report = validate_onnx(path, subject.wrapper, subject.spec, (1, 3), 1e-4, subject.output_shapes)
    assert report["passed"] and max(d["last_hidden_state"] for d in report["max_abs_diff"].values()) <= 1e-4


# ---------------------------------------------------------------- heavy: the whole export, tiny model


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """`tokcomp export OUT` as a user runs it; returns the folder, the encoder's entry and what the command printed."""
    out = compile_tiny(tmp_path_factory.mktemp("whisper"), "  - type: tome\n    target_flops: '-30%'\n")
    env = {**os.environ, "TOKCOMP_QUIET": "1"}
    run = subprocess.run([sys.executable, "-m", "tokcomp.cli", "export", str(out)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    entry = next(e for e in tokcomp.checkpoint.read_state(out).exports if e["file"] == "model.onnx")
    return out, entry, run.stdout


@pytest.mark.heavy  # traces three graphs: about a minute on a shared 2-core CPU
def test_export_writes_encoder_and_cached_decoder(tiny_export):
    out, entry, printed = tiny_export
    files = ["model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"]
    assert [Path(line).name for line in printed.split()] == files  # the command prints every file it wrote
    assert entry["file"] == "model.onnx" and entry["component"] == "encoder"
    assert entry["inputs"] == {"input_features": ["batch_size", MEL_BINS, 2 * WINDOW]}
    tokens = entry["outputs"]["last_hidden_state"][1]
    assert entry["outputs"]["last_hidden_state"] == ["batch_size", tokens, HIDDEN + 1] and tokens < WINDOW
    assert entry["size_channel"]["channel"] == HIDDEN and "log(size)" in entry["size_channel"]["meaning"]
    exports = {e["file"]: e for e in tokcomp.checkpoint.read_state(out).exports}
    assert set(exports) == {"model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"}
    assert all(e["validation"]["passed"] for e in exports.values())
    step = exports["decoder_with_past_model.onnx"]
    assert step["inputs"]["past_key_values.0.decoder.key"][2] == "past_sequence_length"
    assert step["inputs"]["encoder_hidden_states"] == ["batch_size", tokens, HIDDEN + 1]
    assert exports["decoder_model.onnx"]["dynamic_axes"]["decoder_sequence_length"] == ["input_ids"]
    assert not list(out.glob(".*partial*"))


@pytest.mark.heavy
def test_onnx_runtime_transcribes_like_generate(tiny_export):
    out, _, _ = tiny_export
    model = tokcomp.load(out)
    x = features(4, audible=[100, 30, 70, 55], seed=3)
    expected = generated(model, x, max_new_tokens=12)
    assert len({tuple(r) for r in expected}) > 1  # the clips decode differently: a real comparison
    assert transcribe_onnx(out, x.numpy(), max_new_tokens=12) == expected
    assert transcribe_onnx(out, x[1:2].numpy(), max_new_tokens=12) == expected[1:2]  # alone as in a batch


# ---------------------------------------------------------------- heavy: real model, real speech


@pytest.mark.slow
@pytest.mark.heavy  # exports whisper-tiny-en's three graphs: minutes on a 2-core CPU
def test_real_whisper_onnx_transcripts_equal_pytorch(tmp_path):
    from transformers import AutoProcessor

    from tokcomp.export.artifacts import open_subject
    from tokcomp.export.validate import compare_on_inputs, onnx_runtime_session
    from tokcomp.pipeline import compile_recipe
    from tokcomp.recipe import load_recipe
    from tokcomp.zoo import pull
    from tokcomp.zoo.speech import speech_clips

    folder = pull("zoo:whisper-tiny-en")
    clips = speech_clips("librivox", "evaluation", limit=4) + speech_clips("commands", "evaluation", limit=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {folder}\npasses:\n  - type: tome\n    target_flops: '-50%'\n")
    out = compile_recipe(load_recipe(recipe), tmp_path / "out")
    export_checkpoint(out, "onnx")

    processor = AutoProcessor.from_pretrained(folder)
    x = processor.feature_extractor([c.audio for c in clips], sampling_rate=16000, return_tensors="pt").input_features
    # The encoder on real log-mels too, by the validation's rule: within 1e-4 of PyTorch, or the clip is
    # ill-conditioned (PyTorch fp32 itself off fp64 there: near-identical padding tokens tie in ToMe's matching).
    subject = open_subject(out)
    session = onnx_runtime_session(out / "model.onnx")
    report = compare_on_inputs(
        lambda inputs: session.run(None, {"input_features": inputs["input_features"].numpy()}),
        subject.wrapper,
        subject.spec,
        {"input_features": x},
    )
    excused = [i for entry in report["ill_conditioned"] for i in entry["samples"]]
    assert len(excused) <= 2, report

    model = tokcomp.load(out)
    expected = generated(model, x, max_new_tokens=96)
    ids = transcribe_onnx(out, x.numpy(), max_new_tokens=96, threads=2)
    assert ids == expected, (processor.batch_decode(ids), processor.batch_decode(expected))
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    assert sum(len(t.split()) for t in texts) >= 2 * len(clips)  # real transcripts, not empty strings
