"""zoo:whisper-tiny-en and zoo:whisper-base: the CTranslate2 reader, the conversion, and real transcription.

Fast tests write small model.bin files themselves (including a whole random Whisper laid out
the CTranslate2 way) and check the reader and the mapping exactly. Slow tests build the real
models from their carrier packages and transcribe real recordings.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from tokcomp.errors import ZooError
from tokcomp.zoo import registry, whisper
from tokcomp.zoo.ctranslate2 import parse_model_bin, read_model_bin

_CODES = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}


def _name(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(variables: dict[str, np.ndarray], aliases: dict[str, str] = (), spec: str = "WhisperSpec",
                    version: int = 6, bfloat16: frozenset[str] = frozenset()) -> bytes:  # fmt: skip
    """A CTranslate2 model.bin, written from the format description (independently of the reader)."""
    out = struct.pack("<I", version) + _name(spec) + struct.pack("<II", 3, len(variables))
    for name, array in variables.items():
        array = np.array(array, order="C")  # (ascontiguousarray would make scalars 1-d)
        if name in bfloat16:
            data, code = (array.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes(), 5
        else:
            data, code = array.astype(array.dtype.newbyteorder("<")).tobytes(), _CODES[array.dtype]
        out += _name(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        out += struct.pack("<BI", code, len(data)) + data
    out += struct.pack("<I", len(dict(aliases)))
    for alias, target in dict(aliases).items():
        out += _name(alias) + _name(target)
    return out


# --- reader ---------------------------------------------------------------------------------


def test_reader_reads_every_dtype_shape_and_alias(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/weight": rng.standard_normal((3, 4)).astype(np.float16),
        "a/bias": rng.standard_normal(3).astype(np.float32),
        "conv/weight": rng.standard_normal((2, 3, 3)).astype(np.float16),
        "ints8": np.array([-3, 7], dtype=np.int8),
        "ints16": np.array([[1, -2], [3, 4]], dtype=np.int16),
        "ints32": np.array([123456], dtype=np.int32),
        "num_heads": np.array(6, dtype=np.int16),
        "halfway": np.array([1.5, -2.25, 3e38], dtype=np.float32),  # exact in bfloat16 (top 16 bits)
    }
    path = tmp_path / "model.bin"
    path.write_bytes(write_model_bin(variables, {"b/weight": "a/weight"}, bfloat16=frozenset({"halfway"})))
    parsed = read_model_bin(path)
    assert parsed.name == "WhisperSpec" and parsed.revision == 3
    for name, array in variables.items():
        if name == "halfway":
            expected = (array.view(np.uint32) & 0xFFFF0000).view(np.float32)
            np.testing.assert_array_equal(parsed.variables[name], expected)
            assert parsed.variables[name].dtype == np.float32
        else:
            assert parsed.variables[name].dtype == array.dtype and parsed.variables[name].shape == array.shape
            np.testing.assert_array_equal(parsed.variables[name], array)
    np.testing.assert_array_equal(parsed.variables["b/weight"], variables["a/weight"])
    assert parsed.scalar("num_heads") == 6


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw[:-7], "ends early"),
        (lambda raw: raw + b"\0", "unread bytes"),
        (lambda raw: struct.pack("<I", 5) + raw[4:], "binary version 5"),
    ],
)
def test_reader_refuses_damaged_files(mutate, message):
    raw = write_model_bin({"w": np.ones((2, 2), np.float16)})
    with pytest.raises(ZooError, match=message) as info:
        parse_model_bin(mutate(raw))
    assert "\n" not in str(info.value)


def test_reader_refuses_unknown_dtype_and_dangling_alias():
    raw = bytearray(write_model_bin({"w": np.ones(2, np.float32)}))
    dtype_at = raw.index(b"w\0") + 2 + 1 + 4  # name, rank, one dim
    raw[dtype_at] = 9
    with pytest.raises(ZooError, match="unknown dtype code 9"):
        parse_model_bin(bytes(raw))
    with pytest.raises(ZooError, match="missing variable nowhere"):
        parse_model_bin(write_model_bin({"w": np.ones(2, np.float32)}, {"x": "nowhere"}))


# --- conversion on a random Whisper ----------------------------------------------------------


def _tiny_whisper(vocab: int = 51865):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=448,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-zero biases and norms everywhere, so a misplaced tensor shows
        for name, p in model.named_parameters():
            if "k_proj" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _as_ctranslate2(model) -> dict[str, np.ndarray]:
    """The CTranslate2 layout of a transformers Whisper: the mapping written out in the other direction."""
    s = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    zeros = np.zeros_like(s["model.encoder.layers.0.self_attn.q_proj.bias"])
    out: dict[str, np.ndarray] = {}

    def lin(dst, src):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = s[f"{src}.weight"], s[f"{src}.bias"]

    def ln(dst, src):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = s[f"{src}.weight"], s[f"{src}.bias"]

    def qkv(dst, src, names):
        out[f"{dst}/weight"] = np.concatenate([s[f"{src}.{n}.weight"] for n in names])
        out[f"{dst}/bias"] = np.concatenate([zeros if n == "k_proj" else s[f"{src}.{n}.bias"] for n in names])

    for stack in ("encoder", "decoder"):
        m = f"model.{stack}"
        for i in range(2):
            dst, src = f"{stack}/layer_{i}", f"{m}.layers.{i}"
            qkv(f"{dst}/self_attention/linear_0", f"{src}.self_attn", ("q_proj", "k_proj", "v_proj"))
            lin(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
            ln(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            lin(f"{dst}/ffn/linear_0", f"{src}.fc1")
            lin(f"{dst}/ffn/linear_1", f"{src}.fc2")
            ln(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
            if stack == "decoder":
                lin(f"{dst}/attention/linear_0", f"{src}.encoder_attn.q_proj")
                qkv(f"{dst}/attention/linear_1", f"{src}.encoder_attn", ("k_proj", "v_proj"))
                lin(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
                ln(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
        ln(f"{stack}/layer_norm", f"{m}.layer_norm")
        out[f"{stack}/position_encodings/encodings"] = s[f"{m}.embed_positions.weight"]
        out[f"{stack}/num_heads"] = np.array(2, np.int16)
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = s["model.decoder.embed_tokens.weight"]
    return out


def _tokens(multilingual: bool) -> dict:
    eot = 50257 if multilingual else 50256
    tokens = {"eot": eot, "sot": eot + 1, "translate": eot + 101, "transcribe": eot + 102, "sot_lm": eot + 103,
              "sot_prev": eot + 104, "no_speech": eot + 105, "no_timestamps": eot + 106}  # fmt: skip
    tokens["languages"] = {"en": eot + 2, "fr": eot + 3}
    tokens["multilingual"] = multilingual
    tokens["timestamp_begin"] = eot + 107
    return tokens


def test_conversion_reproduces_a_random_whisper_exactly():
    original = _tiny_whisper()
    with torch.no_grad():  # the carriers are float16: round the original the same way
        for p in original.parameters():
            p.copy_(p.half().float())
    raw = write_model_bin(_as_ctranslate2(original), {"decoder/projection/weight": "decoder/embeddings/weight"})
    converted = whisper.whisper_model(parse_model_bin(raw), _tokens(multilingual=True))
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[50258, 50259, 50359, 50363, 100]])
    with torch.inference_mode():
        torch.testing.assert_close(
            converted(features, decoder_input_ids=decoder_ids).logits,
            original(features, decoder_input_ids=decoder_ids).logits,
        )


def test_conversion_refuses_a_nonzero_key_bias():
    variables = _as_ctranslate2(_tiny_whisper())
    variables["encoder/layer_0/self_attention/linear_0/bias"][16:32] = 1.0  # the k slice
    with pytest.raises(ZooError, match="key bias is not zero"):
        whisper.whisper_model(parse_model_bin(write_model_bin(variables)), _tokens(multilingual=True))


def _tokenizer_json(tmp_path, multilingual: bool):
    eot = 50257 if multilingual else 50256
    names = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
             "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
    ids = [eot, eot + 1, eot + 2, eot + 3, eot + 101, eot + 102, eot + 103, eot + 104, eot + 105, eot + 106]
    added = [{"id": i, "content": n, "special": True} for i, n in zip(ids, names, strict=True)]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"added_tokens": added}))
    return path


@pytest.mark.parametrize("multilingual", [False, True])
def test_generation_config_follows_the_vocabulary(tmp_path, multilingual):
    tokens = whisper.special_tokens(_tokenizer_json(tmp_path, multilingual))
    eot = 50257 if multilingual else 50256
    assert tokens["eot"] == eot and tokens["multilingual"] is multilingual
    assert tokens["languages"] == {"en": eot + 2, "fr": eot + 3}
    ct2 = {"suppress_ids": [1, 2, 50358], "suppress_ids_begin": [220, eot], "alignment_heads": [[1, 0], [2, 3]]}
    whisper._check_end_of_text(tokens, ct2)
    config = whisper.generation_config(tokens, ct2, _tiny_whisper().config)
    assert config.eos_token_id == eot and config.pad_token_id == eot
    assert config.decoder_start_token_id == eot + 1 and config.no_timestamps_token_id == eot + 106
    assert config.begin_suppress_tokens == [220, eot] and config.suppress_tokens == [1, 2, 50358]
    assert config.alignment_heads == [[1, 0], [2, 3]] and config.is_multilingual is multilingual
    if multilingual:
        assert config.lang_to_id == {"<|en|>": eot + 2, "<|fr|>": eot + 3}
        assert config.task_to_id == {"transcribe": eot + 102, "translate": eot + 101}
    else:  # transformers reads lang_to_id's presence as "multilingual"
        assert not hasattr(config, "lang_to_id") and not hasattr(config, "task_to_id")


def test_a_tokenizer_from_another_vocabulary_is_refused(tmp_path):
    tokens = whisper.special_tokens(_tokenizer_json(tmp_path, multilingual=False))  # end of text 50256
    with pytest.raises(ZooError, match="does not belong to this model.bin"):
        whisper._check_end_of_text(tokens, {"suppress_ids_begin": [220, 50257]})


def test_registry_lists_the_whisper_models_as_audio():
    for name in ("whisper-tiny-en", "whisper-base"):
        assert registry.MODELS[name].modality == "audio"


# --- real models -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en():
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from tokcomp.zoo import pull

    folder = pull("zoo:whisper-tiny-en")
    return folder, WhisperForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def base():
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from tokcomp.zoo import pull

    folder = pull("zoo:whisper-base")
    return folder, WhisperForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _clips(source: str, count: int):
    from tokcomp.zoo.speech import speech_clips

    return speech_clips(source, "evaluation", limit=count)  # the clips benchmarks/whisper_original.py --limit uses


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("fixture, end_of_text, vocab", [("tiny_en", 50256, 51864), ("base", 50257, 51865)])
def test_english_speech_is_transcribed_and_generation_stops_at_end_of_text(request, fixture, end_of_text, vocab):
    from tokcomp.evaluation.speech import error_rates

    folder, model, processor = request.getfixturevalue(fixture)
    assert model.generation_config.eos_token_id == end_of_text and model.config.vocab_size == vocab
    assert (folder / "ctranslate2" / "model.bin").is_file()
    clips = _clips("librivox", 5) + _clips("commands", 6)
    features = processor.feature_extractor([c.audio for c in clips], sampling_rate=16000, return_tensors="pt")
    options = {"language": "en"} if model.generation_config.is_multilingual else {}
    with torch.inference_mode():
        tokens = model.generate(features.input_features, do_sample=False, **options)
    texts = processor.batch_decode(tokens, skip_special_tokens=True)
    score, _ = error_rates([c.transcript for c in clips], texts, "en")
    assert score.wer < 0.10, list(zip(texts, [c.transcript for c in clips], strict=True))
    # Generation stops at end-of-text long before the length limit (448 tokens; with a wrong end id
    # every clip runs to it). Shorter rows are padded with end-of-text; transformers trims it from the longest.
    assert tokens.shape[1] < 60
    assert sum(end_of_text in row for row in tokens.tolist()) >= len(clips) - 1


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("language", ["fr", "es", "ru"])
def test_base_transcribes_other_languages_with_the_forced_language(base, language):
    from tokcomp.evaluation.speech import error_rates, transcribe

    _folder, model, processor = base
    assert model.generation_config.eos_token_id == 50257 and model.config.vocab_size == 51865
    clips = _clips(f"asterisk-{language}", 5)
    texts = transcribe(model, processor, clips)  # each clip's own language, forced
    score, _ = error_rates([c.transcript for c in clips], texts, language)
    assert score.wer < 0.35, list(zip(texts, [c.transcript for c in clips], strict=True))
    if language == "ru":  # forced Russian output is Cyrillic
        assert all(any("а" <= ch <= "я" for ch in t.lower()) for t in texts)


@pytest.mark.slow
@pytest.mark.heavy
def test_encoders_match_ctranslate2_on_real_speech(tiny_en, base):
    ctranslate2 = pytest.importorskip("ctranslate2")
    clips = _clips("librivox", 2)
    for folder, model, processor in (tiny_en, base):
        features = processor.feature_extractor([c.audio for c in clips], sampling_rate=16000, return_tensors="pt")
        reference = ctranslate2.models.Whisper(str(folder / "ctranslate2"), device="cpu", compute_type="float32")
        expected = np.array(reference.encode(ctranslate2.StorageView.from_array(features.input_features.numpy())))
        with torch.inference_mode():
            ours = model.model.encoder(features.input_features).last_hidden_state.numpy()
        assert np.abs(ours - expected).max() < 1e-3 * np.abs(expected).max()
