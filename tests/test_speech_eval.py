"""Long-form transcription (windows, text merging) and `tokcomp eval` on Whisper checkpoints.

Fast tests: the window and merge rules on their own, and a tiny random multilingual Whisper
(1 s window) compiled with adjacent_merge and evaluated on a small audio manifest written
here. Slow tests: real long recordings (Asterisk prompts of 30-74 s) with zoo:whisper-base.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import tokcomp
from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.errors import TokcompError
from tokcomp.evaluation import long_form, speech_eval
from tokcomp.evaluation.speech import transcribe

# ---------------------------------------------------------------- windows and merging


def test_windows_cover_the_recording_with_the_overlap():
    got = long_form.windows(73.3)
    assert [(w.start, round(w.end, 1)) for w in got] == [(0.0, 30.0), (25.0, 55.0), (50.0, 73.3)]
    assert long_form.windows(12.0) == [long_form.Window(0.0, 12.0)]
    assert len(long_form.windows(30.0)) == 1 and len(long_form.windows(30.5)) == 2
    for bad in ({"window": 31.0}, {"overlap": 15.0}, {"overlap": -1.0}):
        with pytest.raises(TokcompError):
            long_form.windows(60.0, **bad)


def test_merge_keeps_each_half_of_the_overlap_away_from_the_cut():
    # Both windows hear "like to test out the voice over IP"; each cuts a word in half at its edge.
    left = "dial two now. If you'd like to test out the voice over IP capa"
    right = "ke to test out the voice over IP capabilities of Asterisk"
    assert long_form.overlap_length(left.split(), right.split()) == 9
    assert long_form.merge_texts(left, right) == (
        "dial two now. If you'd like to test out the voice over IP capabilities of Asterisk"
    )


def test_merge_compares_normalised_words_and_concatenates_without_overlap():
    assert long_form.merge_texts("Press one. Then Press", "then press two, now") == "Press one. Then press two, now"
    assert (
        long_form.merge_texts("hello there", "completely different words") == "hello there completely different words"
    )
    assert long_form.merge_texts("", "only right") == "only right"
    # One equal word is no evidence of an overlap.
    assert long_form.merge_texts("a b c", "c d e") == "a b c c d e"


# ---------------------------------------------------------------- a tiny multilingual Whisper

TINY_WINDOW = 1.0  # seconds: the tiny model's whole window


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, tokcomp checkpoint with adjacent_merge, processor)."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from tests.test_vocab_tokenizers import prose
    from tests.test_whisper_vocab import _model, _tokenizer

    root = tmp_path_factory.mktemp("speech-eval")
    folder = root / "tiny-whisper"
    folder.mkdir()
    tokenizer = _tokenizer(prose()[0])
    model = _model(tokenizer, folder)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=16, chunk_length=1), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    out = tokcomp.compile(
        {"model": str(folder), "passes": [{"type": "adjacent_merge", "target_flops": "-25%"}]}, root / "out"
    )
    return folder, out, processor


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """3 clips of noise (2 English, 1 French) with transcripts, as a .tsv manifest."""
    soundfile = pytest.importorskip("soundfile")  # tokcomp[audio]
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    lines = ["path\ttranscript\tlanguage"]
    for index, (text, language) in enumerate(
        [("the first clip", "en"), ("a second one", "en"), ("le troisième", "fr")]
    ):
        audio = (0.1 * rng.standard_normal(int(0.8 * SAMPLE_RATE))).astype(np.float32)
        soundfile.write(root / f"clip{index}.wav", audio, SAMPLE_RATE)
        lines.append(f"clip{index}.wav\t{text}\t{language}")
    path = root / "clips.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_long_form_joins_the_windows_own_transcripts(tiny):
    from transformers import WhisperForConditionalGeneration

    folder, _, processor = tiny
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    rng = np.random.default_rng(1)
    clip = SpeechClip("long", (0.1 * rng.standard_normal(int(2.5 * SAMPLE_RATE))).astype(np.float32), None, "en")
    got = long_form.transcribe_long(model, processor, [clip], window=TINY_WINDOW, overlap=0.2)
    spans = long_form.windows(clip.seconds, TINY_WINDOW, 0.2)
    assert len(spans) == 3
    pieces = [
        SpeechClip(f"w{i}", clip.audio[int(w.start * SAMPLE_RATE) : int(w.end * SAMPLE_RATE)], None, "en")
        for i, w in enumerate(spans)
    ]
    texts = transcribe(model, processor, pieces)
    expected = texts[0]
    for text in texts[1:]:
        expected = long_form.merge_texts(expected, text)
    assert got == [expected]
    short = SpeechClip("short", clip.audio[: SAMPLE_RATE // 2], None, "en")
    assert long_form.transcribe_long(model, processor, [short], window=TINY_WINDOW, overlap=0.2) == transcribe(
        model, processor, [short]
    )


def test_eval_cli_on_a_whisper_checkpoint(tiny, manifest, tmp_path):
    from tokcomp.cli import app

    _, out, _ = tiny
    target = tmp_path / "speech-eval.json"
    result = CliRunner().invoke(app, ["eval", str(out), "--data", str(manifest), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert str(target.resolve()) in result.output
    assert "WER vs reference (fr)" in result.output and "encoder GMACs per 30 s window" in result.output
    saved = json.loads(target.read_text())
    assert saved["task"] == "speech-recognition" and saved["samples"] == 3
    assert set(saved["languages"]) == {"en", "fr"}
    for group in [saved["overall"], *saved["languages"].values()]:
        for key in ("compressed_vs_reference", "original_vs_reference", "compressed_vs_original"):
            assert {"wer", "cer", "words", "chars"} <= set(group[key])
    assert saved["languages"]["en"]["clips"] == 2 and saved["overall"]["clips"] == 3
    encoder = saved["encoder"]
    assert encoder["per_window"]["compressed"] < encoder["per_window"]["original"] and encoder["windows"] == 3
    assert encoder["tokens_per_layer"]["compressed"][-1] < encoder["tokens_per_layer"]["input"] == 50
    assert [c["name"] for c in saved["clips"]] == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert saved["original"] == "the checkpoint's weights, no pass replayed"
    # Whatever the random model writes, the flags follow the WER against the original.
    changed = saved["overall"]["compressed_vs_original"]["wer"]
    assert any(f.startswith("all clips") for f in saved["flagged"]) == (changed > speech_eval.MAX_WER_VS_ORIGINAL)


def test_report_draws_speech_merge_maps(tiny, manifest, tmp_path):
    from tokcomp.visual.page import write_report
    from tokcomp.visual.speech_map import STRIP_ROWS, trace_speech_maps

    _, out, processor = tiny
    page = write_report(out, tmp_path / "report", images=2, data=str(manifest))
    text = page.read_text()
    assert "Merge maps" in text and text.count("50 positions") == 2
    assert (page.parent / "speech_merge_map_02.png").is_file()
    clips = speech_eval.load_speech_data(str(manifest))[1][:1]
    (merge_map,) = trace_speech_maps(tokcomp.load(out).eval(), clips, processor)
    # Every position is owned by exactly one final token; merging left fewer regions than positions.
    assert merge_map.owners.shape == (1, 50) and merge_map.dropped == 0
    assert merge_map.regions == merge_map.final_tokens < 50
    from tokcomp.visual.speech_map import render_speech

    assert render_speech(merge_map).shape[0] == 16 * 3 + 3 + STRIP_ROWS


def test_after_vocab_trim_the_original_is_the_base_model(tiny, manifest, tmp_path):
    from tests.test_vocab_tokenizers import prose

    folder, _, _ = tiny
    corpus, held_out = prose()
    (tmp_path / "corpus.txt").write_text("\n".join(corpus[:300]))
    (tmp_path / "held_out.txt").write_text("\n".join(held_out[:40]))
    trim = {
        "type": "vocab_trim",
        "languages": ["en"],
        "corpus": [str(tmp_path / "corpus.txt")],
        "rule": {"top_n": 300},
        "checks": {
            "held_out": [str(tmp_path / "held_out.txt")],
            "off_target": [str(tmp_path / "held_out.txt")],
            "logits_texts": 2,
            "generate_prompts": 2,
            "max_new_tokens": 4,
        },
    }
    out = tokcomp.compile({"model": str(folder), "passes": [trim]}, tmp_path / "trimmed")
    result = speech_eval.evaluate_speech_checkpoint(out, str(manifest))
    # Not the trimmed weights again: the model the recipe named, so dropped tokens count as changes.
    assert result["original"] == str(folder)
    assert result["encoder"]["ratio"] == 1.0 and result["passes"] == ["vocab_trim"]
    assert all(clip["original"] is not None for clip in result["clips"])


def test_poor_results_are_flagged_per_language():
    clips = [SpeechClip("a", np.zeros(16000, np.float32), "one two three four", "en"),
             SpeechClip("b", np.zeros(16000, np.float32), "un deux trois quatre", "fr")]  # fmt: skip
    scores = speech_eval.score_transcripts(
        clips, ["one two three four", "un deux"], ["one two three four", "un deux trois quatre"]
    )
    assert scores["languages"]["en"]["compressed_vs_original"]["wer"] == 0.0
    assert scores["languages"]["fr"]["compressed_vs_original"]["wer"] == 0.5
    assert scores["overall"]["identical_transcripts"] == 1
    flagged = speech_eval._flag(scores)
    assert len(flagged) == 2 and flagged[0].startswith("all clips") and flagged[1].startswith("language fr")


def test_unknown_speech_data_is_refused():
    with pytest.raises(TokcompError, match="unknown speech data zoo:nothing"):
        speech_eval.load_speech_data("zoo:nothing")


# ---------------------------------------------------------------- real long recordings

ZOO_BASE = Path.home() / ".cache" / "tokcomp" / "zoo" / "whisper-base"


@pytest.mark.slow
@pytest.mark.heavy
def test_real_long_recordings_transcribe_in_windows(tmp_path):
    from transformers import AutoProcessor

    from tokcomp.evaluation.speech import error_rates
    from tokcomp.zoo.speech import long_speech_clips

    if not ZOO_BASE.is_dir():
        pytest.skip("zoo:whisper-base is not built")
    clips = [c for c in long_speech_clips("asterisk-en") if c.name in ("demo-instruct", "priv-callee-options")]
    assert [round(c.seconds) for c in clips] == [73, 31]
    out = tokcomp.compile(
        {"model": "zoo:whisper-base", "passes": [{"type": "adjacent_merge", "target_flops": "-30%"}]}, tmp_path / "out"
    )
    compressed, processor = tokcomp.load(out).eval(), AutoProcessor.from_pretrained(out)
    from tokcomp.evaluation.models import open_original

    original = open_original(out).eval()
    before = long_form.transcribe_long(original, processor, clips)
    after = long_form.transcribe_long(compressed, processor, clips)
    references = [c.transcript for c in clips]
    # The windows are joined without losing or repeating text: the original stays close to the references.
    original_score, _ = error_rates(references, before, "en")
    assert original_score.wer < 0.15
    changed, _ = error_rates(before, after, "en")
    assert changed.wer < 0.15
