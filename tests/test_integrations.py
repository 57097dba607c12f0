"""Compressed checkpoints in the tools users run: sentence-transformers, transformers' Auto classes,
ONNX Runtime with any sentence length, and the model card.

Fast tests use a tiny random BERT with a real WordPiece tokenizer built here; the slow ones
the real zoo:minilm-l6 and zoo:multilingual-e5-small on held-out sentences.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tokcomp
from tokcomp.pooling import pool
from tokcomp.surgery import capture_final_state, token_blocks

WORDS = (
    "the a cat dog sat on mat red blue green house tree river stone walks runs quickly slowly under over "
    "near far light dark small large old new city road car train ship bird fish sings reads writes . , ?"
).split()


def sentences(count: int, seed: int, longest: int = 120) -> list[str]:
    """Random sentences from WORDS, 1 to `longest` words: real tokenization, every padded length."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(count)]


def _tiny_sentence_model(folder: Path) -> Path:
    """A tiny random BertModel + a WordPiece tokenizer + sentence-transformers files (mean, Normalize)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tokcomp.integrations.st_files import write_sentence_transformers_files

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate([*specials, *sorted(set(WORDS))])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=256,
    )  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, vocab_size=len(vocab),
        max_position_embeddings=256,
    )  # fmt: skip
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_sentence_transformers_files(folder, pooling="mean", normalize=True, max_seq_length=256)
    return folder


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory) -> Path:
    return _tiny_sentence_model(tmp_path_factory.mktemp("tiny-st"))


def _compile(source: Path, out: Path, passes: list[dict]) -> Path:
    recipe = {"model": {"source": str(source), "sequence_length": 64}, "passes": passes, "evaluation": False}
    return tokcomp.compile(recipe, out)


@pytest.fixture(scope="module")
def tome_checkpoint(sentence_model, tmp_path_factory) -> Path:
    return _compile(sentence_model, tmp_path_factory.mktemp("ckpt") / "tome", [{"type": "tome", "r": 8}])


def _tokcomp_embeddings(folder: Path, texts: list[str]) -> torch.Tensor:
    """Reference: tokcomp.load + size-weighted mean pooling + L2 normalisation, dynamically padded."""
    from transformers import AutoTokenizer

    model = tokcomp.load(folder)
    batch = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad(), capture_final_state(model) as states:
        tokens = model(**batch).last_hidden_state
    return pool(tokens, states[-1].weight(), "mean", normalize=True)


# ---------------------------------------------------------------- sentence-transformers


def test_checkpoint_keeps_sentence_transformers_files(tome_checkpoint):
    modules = yaml.safe_load((tome_checkpoint / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["TokcompTransformer", "Pooling", "Normalize"]
    assert (tome_checkpoint / "1_Pooling" / "config.json").is_file()
    assert (tome_checkpoint / "2_Normalize").is_dir()
    assert (tome_checkpoint / "sentence_bert_config.json").is_file()


def test_sentence_transformer_pools_by_token_size(tome_checkpoint):
    st = pytest.importorskip("sentence_transformers")
    texts = sentences(12, seed=1)
    model = st.SentenceTransformer(str(tome_checkpoint), trust_remote_code=True, device="cpu")
    got = model.encode(texts, batch_size=5, convert_to_tensor=True)
    # Batches of 5 pad differently from one batch of 12: a per-sample rate makes that irrelevant.
    want = _tokcomp_embeddings(tome_checkpoint, texts)
    assert torch.allclose(got, want, atol=1e-5)
    assert token_blocks(model[0].model)


def test_sentence_transformer_features_can_be_encoded_twice(tome_checkpoint):
    """forward hands Pooling the output's token sizes as the attention mask; a second forward of the
    same features dict (as a training loop or a profiler warm-up does) must still read the input's."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(tome_checkpoint), trust_remote_code=True, device="cpu")
    features = model.preprocess(sentences(6, seed=2))
    with torch.inference_mode():
        first = model(features)["sentence_embedding"].clone()
        assert features["attention_mask"].shape[1] < features["input_ids"].shape[1]  # tokens were merged
        second = model(features)["sentence_embedding"]
    assert torch.equal(first, second)


def test_sentence_transformer_at_r0_is_the_original(sentence_model, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    out = _compile(sentence_model, tmp_path / "r0", [{"type": "tome", "r": 0}])
    texts = sentences(8, seed=2)
    got = st.SentenceTransformer(str(out), trust_remote_code=True, device="cpu").encode(texts, convert_to_tensor=True)
    want = st.SentenceTransformer(str(sentence_model), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(got, want, atol=1e-5)


def test_sentence_transformer_needs_trust_remote_code(tome_checkpoint):
    st = pytest.importorskip("sentence_transformers")
    with pytest.raises(ValueError, match="trust_remote_code"):
        st.SentenceTransformer(str(tome_checkpoint), device="cpu")


def test_position_dependent_pooling_is_refused(sentence_model, tmp_path):
    import shutil

    from tokcomp.errors import TokcompError

    source = tmp_path / "lasttoken"
    shutil.copytree(sentence_model, source)
    config = source / "1_Pooling" / "config.json"
    config.write_text('{"word_embedding_dimension": 64, "pooling_mode_lasttoken": true}')
    with pytest.raises(TokcompError, match="lasttoken"):
        _compile(source, tmp_path / "out", [{"type": "tome", "r": 4}])


# ---------------------------------------------------------------- transformers Auto classes


def test_auto_model_never_loads_the_uncompressed_model(tome_checkpoint):
    """In a fresh process (tokcomp not imported) transformers refuses the folder; it never loads BertModel plain."""
    code = (
        "import sys\n"
        "from transformers import AutoModel\n"
        f"try:\n    AutoModel.from_pretrained({str(tome_checkpoint)!r})\n"
        "except Exception as exc:\n    print('REFUSED', type(exc).__name__); sys.exit(0)\n"
        "print('LOADED'); sys.exit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "REFUSED" in result.stdout, result.stdout + result.stderr[-2000:]


def test_auto_model_with_trust_remote_code_returns_the_compressed_model(tome_checkpoint):
    code = (
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tome_checkpoint)!r}, trust_remote_code=True)\n"
        "from tokcomp.surgery import token_blocks\n"
        "print('BLOCKS', len(token_blocks(m)), type(m).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "BLOCKS 3 BertModel" in result.stdout, result.stdout + result.stderr[-2000:]


def test_auto_classes_after_import(tome_checkpoint):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from tokcomp.errors import CheckpointError

    assert AutoConfig.from_pretrained(str(tome_checkpoint)).model_type == "tokcomp"
    model = AutoModel.from_pretrained(str(tome_checkpoint))
    assert len(token_blocks(model)) == 3
    with pytest.raises(CheckpointError, match="AutoModel"):
        AutoModelForSequenceClassification.from_pretrained(str(tome_checkpoint))


def test_pipeline_gives_the_compressed_model(tome_checkpoint):
    from transformers import pipeline

    extractor = pipeline("feature-extraction", model=str(tome_checkpoint), trust_remote_code=True)
    assert token_blocks(extractor.model)
    text = sentences(1, seed=3, longest=40)[0]
    features = np.asarray(extractor(text))
    assert features.shape[1] < len(extractor.tokenizer(text)["input_ids"])  # tokens were reduced


# ---------------------------------------------------------------- ONNX Runtime


@pytest.fixture(scope="module")
def onnx_checkpoint(tome_checkpoint):
    from tokcomp.export import export_checkpoint

    entry = export_checkpoint(tome_checkpoint, "onnx")
    return tome_checkpoint, entry


def test_onnx_export_has_a_dynamic_sequence_axis(onnx_checkpoint):
    _, entry = onnx_checkpoint
    assert entry["inputs"]["input_ids"] == ["batch_size", "sequence_length"]
    assert entry["outputs"]["token_weights"][:2] == ["batch_size", "tokens"]
    assert entry["validation"]["passed"] and entry["validation"]["sequence_lengths"] == [3, 17, 64, 128]


def test_onnx_runtime_embeddings_equal_pytorch(onnx_checkpoint):
    from tokcomp.runtime import OnnxSentenceEncoder

    folder, _ = onnx_checkpoint
    encoder = OnnxSentenceEncoder(folder)
    for seed, longest, batch in ((4, 1, 1), (5, 20, 3), (6, 120, 8)):
        texts = sentences(batch, seed=seed, longest=longest)
        got = encoder.encode(texts, batch_size=batch)
        want = _tokcomp_embeddings(folder, texts).numpy()
        assert np.abs(got - want).max() <= 1e-4, (seed, np.abs(got - want).max())


# ---------------------------------------------------------------- model card


def test_model_card(tome_checkpoint):
    text = (tome_checkpoint / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "sentence-transformers"
    assert {"tokcomp", "tome", "token-reduction"} <= set(header["tags"])
    assert "trust_remote_code=True" in text and "tokcomp.load" in text
    assert "fidelity: not measured" in text  # compiled with evaluation: false, and the card says so
    assert "## Limits" in text


# ---------------------------------------------------------------- real models


def _held_out_sentences(count: int) -> list[str]:
    """Python's reference prose, every 7th sentence: text no recipe calibrates on."""
    from tokcomp.zoo.samples import english_prose

    texts = english_prose()[1::7][:count]
    assert len(texts) == count
    return texts


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", ["minilm-l6", "multilingual-e5-small"])
def test_real_sentence_transformers_checkpoint(name, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from tokcomp import zoo

    original_folder = zoo.pull(name)
    recipe = {"model": f"zoo:{name}", "passes": [{"type": "tome", "target_flops": "-35%"}], "evaluation": False}
    out = tokcomp.compile(recipe, tmp_path / "out")
    texts = _held_out_sentences(48)
    compressed = st.SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    got = compressed.encode(texts, batch_size=16, convert_to_tensor=True)
    assert torch.allclose(got, _tokcomp_embeddings(out, texts), atol=1e-5)
    original = st.SentenceTransformer(str(original_folder), device="cpu").encode(texts, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(got, original)
    print(f"{name} ToMe -35%: cosine to the original {cosine.mean():.4f} (min {cosine.min():.4f}), {len(texts)} sentences")
    assert cosine.mean() > 0.8  # far above random token drop; the benchmark tracks the real figure
    untouched = tokcomp.compile({**recipe, "passes": [{"type": "tome", "r": 0}]}, tmp_path / "r0")
    at_r0 = st.SentenceTransformer(str(untouched), trust_remote_code=True, device="cpu")
    assert torch.allclose(at_r0.encode(texts, batch_size=16, convert_to_tensor=True), original, atol=1e-5)


@pytest.mark.slow
@pytest.mark.heavy
def test_real_onnx_sentence_embeddings(tmp_path):
    from tokcomp.export import export_checkpoint
    from tokcomp.runtime import OnnxSentenceEncoder

    recipe = {"model": "zoo:minilm-l6", "passes": [{"type": "tome", "target_flops": "-35%"}], "evaluation": False}
    out = tokcomp.compile(recipe, tmp_path / "out")
    export_checkpoint(out, "onnx")
    texts = _held_out_sentences(32)
    got = OnnxSentenceEncoder(out).encode(texts, batch_size=8)
    want = _tokcomp_embeddings(out, texts).numpy()
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.heavy
def test_vocab_trimmed_sentence_transformers_checkpoint_stays_plain(tmp_path):
    """vocab_trim changes weights, not the forward pass: a plain folder every tool loads, ST files kept."""
    st = pytest.importorskip("sentence_transformers")
    from tokcomp import zoo
    from tokcomp.zoo.samples import chatterbot_texts

    out = tokcomp.compile(Path(__file__).parents[1] / "recipes" / "vocab_trim_e5_de_fr.yaml", tmp_path / "out")
    config = yaml.safe_load((out / "config.json").read_text())
    assert config["model_type"] == "bert" and not (out / "tokcomp_auto.py").exists()
    modules = yaml.safe_load((out / "modules.json").read_text())
    assert modules[0]["type"] == "sentence_transformers.models.Transformer"
    texts = chatterbot_texts("de")[-20:]
    trimmed = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    original = st.SentenceTransformer(str(zoo.pull("multilingual-e5-small")), device="cpu").encode(texts, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(trimmed, original)
    print(f"vocab-trimmed e5 via SentenceTransformer: cosine {cosine.mean():.5f} (min {cosine.min():.5f}), 20 sentences")
    assert cosine.mean() > 0.99  # equal where every token is kept; the trim's own checks bound the rest
