"""Speech data: decoding and resampling, folders and manifests with their errors, the zoo's speech clips."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tokcomp.data.audio import SAMPLE_RATE, audio_folder, audio_manifest, load_audio, load_speech, resample
from tokcomp.errors import TokcompError, ZooError
from tokcomp.zoo import debs, speech

soundfile = pytest.importorskip("soundfile")


def _tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


# --- resampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_resampling_a_sine_is_accurate(rate):
    hz = 1234.5
    out = resample(_tone(rate, 2.0, hz) * 2, rate, SAMPLE_RATE)
    assert len(out) == 2 * SAMPLE_RATE and out.dtype == np.float32
    expected = np.sin(2 * np.pi * hz * np.arange(len(out)) / SAMPLE_RATE)
    inner = slice(SAMPLE_RATE // 10, -SAMPLE_RATE // 10)  # away from the zero-padded ends
    assert np.abs(out[inner] - expected[inner]).max() < 1e-4


def test_downsampling_removes_tones_above_the_new_nyquist():
    out = resample(_tone(48000, 1.0, 10000.0) * 2, 48000, SAMPLE_RATE)  # 10 kHz > 8 kHz
    assert np.sqrt(np.mean(out[1600:-1600] ** 2)) < 1e-3  # a full-scale sine has rms 0.71


def test_resampling_keeps_length_ratio_and_identity():
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
    assert len(resample(x, 44100, 16000)) == int(np.ceil(12345 * 160 / 441))


# --- decoding -------------------------------------------------------------------------------


def test_load_audio_mixes_to_mono_and_resamples(tmp_path):
    left, right = _tone(8000), _tone(8000, hz=880.0)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    audio = load_audio(tmp_path / "stereo.wav")
    assert audio.dtype == np.float32 and len(audio) == SAMPLE_RATE
    expected = resample((left + right) / 2, 8000, SAMPLE_RATE)
    assert np.abs(audio - expected).max() < 1e-3  # 16-bit quantisation


@pytest.mark.parametrize("suffix", [".flac", ".ogg", ".mp3"])
def test_load_audio_reads_compressed_formats(tmp_path, suffix):
    if suffix == ".mp3" and "MP3" not in soundfile.available_formats():
        pytest.skip(f"libsndfile {soundfile.__libsndfile_version__} has no MP3 (1.1 or newer has)")
    soundfile.write(tmp_path / f"tone{suffix}", _tone(SAMPLE_RATE), SAMPLE_RATE)
    audio = load_audio(tmp_path / f"tone{suffix}")
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # lossy codecs pad a little
    assert 0.3 < np.sqrt(np.mean(audio**2)) < 0.4  # the tone's rms, 0.354


def test_unreadable_audio_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(TokcompError, match="broken.wav") as info:
        load_audio(bad)
    assert "\n" not in str(info.value) and info.value.hint
    with pytest.raises(TokcompError, match="missing.flac does not exist"):
        load_audio(tmp_path / "missing.flac")


# --- folders and manifests -------------------------------------------------------------------


def _write_clips(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        soundfile.write(folder / name, _tone(8000, 0.5), 8000)


def test_audio_folder_reads_recursively_with_sidecar_transcripts(tmp_path):
    _write_clips(tmp_path / "a", ["one.wav"])
    _write_clips(tmp_path / "b", ["two.flac"])
    (tmp_path / "a" / "one.txt").write_text("hello world\n")
    (tmp_path / "notes.md").write_text("not audio")
    clips = load_speech(tmp_path)
    assert [c.name for c in clips] == ["a/one.wav", "b/two.flac"]
    assert clips[0].transcript == "hello world" and clips[1].transcript is None
    assert all(len(c.audio) == SAMPLE_RATE // 2 for c in clips)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokcompError, match="no audio files"):
        audio_folder(tmp_path / "empty")


def test_tsv_and_jsonl_manifests(tmp_path):
    _write_clips(tmp_path / "audio", ["x.wav", "y.wav"])
    tsv = tmp_path / "list.tsv"
    tsv.write_text("path\ttranscript\tlanguage\naudio/x.wav\tbonjour tout le monde\tfr\naudio/y.wav\thello\n")
    clips = load_speech(tsv)
    assert [(c.name, c.transcript, c.language) for c in clips] == [
        ("audio/x.wav", "bonjour tout le monde", "fr"),
        ("audio/y.wav", "hello", None),
    ]
    jsonl = tmp_path / "list.jsonl"
    rows = [{"path": str(tmp_path / "audio" / "x.wav"), "transcript": "a b c", "language": "es"},
            {"audio": "audio/y.wav", "text": "d e f"}]  # fmt: skip
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    clips = load_speech(jsonl)
    assert [(c.transcript, c.language) for c in clips] == [("a b c", "es"), ("d e f", None)]


@pytest.mark.parametrize(
    "suffix, content, message",
    [
        (".tsv", "audio/x.wav\thi\n", r"list.tsv:1: audio file .*x.wav does not exist"),
        (".tsv", "a.wav\tb\tc\td\n", r"list.tsv:1: 4 tab-separated fields"),
        (".tsv", "\n\n", r"lists no clips"),
        (".jsonl", '{"path": "a.wav"}\n[1]\n', r"list.jsonl:2: a JSON list, not an object"),
        (".jsonl", '{"path": "a.wav", "transcript": 3}\n', r"list.jsonl:1: transcript is a int"),
        (".jsonl", '{"text": "no path"}\n', r"list.jsonl:1: no \"path\" field"),
    ],
)
def test_manifest_errors_name_the_file_and_line(tmp_path, suffix, content, message):
    manifest = tmp_path / f"list{suffix}"
    manifest.write_text(content)
    with pytest.raises(TokcompError, match=message) as info:
        audio_manifest(manifest)
    assert "\n" not in str(info.value)


def test_a_bad_file_in_a_manifest_is_named(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"\0" * 100)
    (tmp_path / "list.tsv").write_text("bad.wav\tsome words here\n")
    with pytest.raises(TokcompError, match="bad.wav"):
        load_speech(tmp_path / "list.tsv")


def test_unknown_speech_sources_are_refused(tmp_path):
    with pytest.raises(TokcompError, match="does not exist"):
        load_speech(tmp_path / "nothing")
    (tmp_path / "clips.csv").write_text("a,b\n")
    with pytest.raises(TokcompError, match="neither a folder nor"):
        load_speech(tmp_path / "clips.csv")


# --- zoo speech: cleaning, splits, fetching ---------------------------------------------------


@pytest.mark.parametrize(
    "text, kept",
    [
        ("Please enter your password followed by the pound key.", True),
        ("  Marque 2  para\tllamar a otro numero. ", True),
        ("[ascending tones]", False),
        ("press * to toggle pause, press # to enter", False),
        ("Activated.", False),
        ("Call waiting.", False),  # two words
        ("... participants dans cette conférence.", True),
    ],
)
def test_transcript_cleaning(text, kept):
    cleaned = speech.clean_transcript(text)
    assert (cleaned is not None) is kept
    if kept:
        assert cleaned == " ".join(text.split())


def test_splits_are_fixed_disjoint_and_keep_small_sources_for_evaluation():
    names = [f"prompt-{i}" for i in range(2000)]
    splits = [speech.split_of("asterisk-fr", n) for n in names]
    assert splits == [speech.split_of("asterisk-fr", n) for n in names]  # deterministic
    share = splits.count("calibration") / len(splits)
    assert abs(share - speech.CALIBRATION_SHARE) < 0.04
    # The split of a prompt depends on the source too, never on the other prompts.
    assert splits != [speech.split_of("asterisk-es", n) for n in names]
    assert {speech.split_of(s, "anything") for s in ("librivox", "commands")} == {"evaluation"}


def test_unknown_source_or_split_is_refused():
    with pytest.raises(ZooError, match="valid sources"):
        speech.speech_clips("asterisk-de")
    with pytest.raises(ZooError, match="valid splits"):
        speech.speech_clips("librivox", "train")


def test_without_apt_the_error_says_how_to_get_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path))
    monkeypatch.setattr(debs.shutil, "which", lambda _name: None)
    with pytest.raises(ZooError, match="apt-get is not available") as info:
        speech.fetch_deb("pocketsphinx-testdata")
    assert str(tmp_path / "debs") in info.value.hint and "\n" not in str(info.value)


def test_a_failed_apt_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path))
    monkeypatch.setattr(debs.shutil, "which", lambda _name: "/usr/bin/apt-get")
    failed = subprocess.CompletedProcess([], 100, "", "W: something\nE: Unable to locate package nosuch-package\n")
    monkeypatch.setattr(debs, "_apt_download", lambda package, dest: failed)
    monkeypatch.setattr(debs.os, "geteuid", lambda: 1000)  # not root: no apt-get update attempt
    with pytest.raises(ZooError, match="E: Unable to locate package nosuch-package") as info:
        speech.fetch_deb("nosuch-package")
    assert "apt-get update" in info.value.hint


def test_a_cached_deb_needs_no_apt(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKCOMP_CACHE", str(tmp_path))
    (tmp_path / "debs").mkdir()
    deb = tmp_path / "debs" / "pocketsphinx-testdata_1.0_all.deb"
    deb.write_bytes(b"!<arch>\n")
    monkeypatch.setattr(debs.shutil, "which", lambda _name: None)
    assert speech.fetch_deb("pocketsphinx-testdata") == deb


@pytest.mark.slow
def test_zoo_speech_clips_are_real_clean_and_split():
    for source in speech.SOURCES:
        calibration = speech.speech_clips(source, "calibration")
        evaluation = speech.speech_clips(source, "evaluation")
        assert not {c.name for c in calibration} & {c.name for c in evaluation}
        assert len(evaluation) >= 5
        if source.startswith("asterisk-"):
            assert len(calibration) >= 50 and len(evaluation) >= 150
        else:
            assert calibration == []
        for clip in evaluation[:20]:
            assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
            assert 0.3 < clip.seconds <= speech.MAX_SECONDS
            assert 0.003 < np.sqrt(np.mean(clip.audio**2)) < 0.5  # speech, not silence or clipping
            assert clip.transcript.strip() == clip.transcript and clip.transcript
            if source.startswith("asterisk-"):  # the pocketsphinx transcripts are clean already
                assert speech.clean_transcript(clip.transcript) == clip.transcript
            assert clip.language == (source.split("-")[1] if "-" in source else "en")
    goforward = [c for c in speech.speech_clips("commands") if c.name == "goforward"]
    assert goforward[0].transcript == "go forward ten meters"
