"""Vocabulary trimming of tiny random models of each family, through a real compile and reload.

Each model gets a tokenizer of its family's type trained here (T5 / mBART: Unigram, BERT:
WordPiece, Llama: SentencePiece-style BPE with byte fallback), is saved as a local Hugging
Face folder, compiled with a vocab_trim recipe (whose built-in checks compare logits and
greedy generation), reloaded with tokcomp.load and with AutoModel*/AutoTokenizer, and
compared with the original on held-out text.
"""

from __future__ import annotations

import pytest
import torch

import tokcomp
from tests.test_vocab_tokenizers import prose, train_tokenizer
from tokcomp.fileio import read_json
from tokcomp.vocab import load_vocab_map

VOCAB = 1500  # trained tokenizer size; no other dimension of the tiny models equals it


def _tiny(family: str, vocab: int, ids: dict[str, int]):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        LlamaConfig,
        LlamaForCausalLM,
        MBartConfig,
        MBartForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    if family.startswith("t5"):
        config = T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
            pad_token_id=ids["pad"], eos_token_id=ids["eos"], decoder_start_token_id=ids["pad"],
            tie_word_embeddings=family == "t5-tied",
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    if family == "mbart":
        config = MBartConfig(
            vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
            pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            decoder_start_token_id=ids["eos"], forced_eos_token_id=ids["eos"], scale_embedding=True,
        )  # fmt: skip
        model = MBartForConditionalGeneration(config)
        # Zero by default: random values make the check see whether it is sliced with the head.
        model.final_logits_bias.normal_()
        return model
    if family == "bert-mlm":
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, pad_token_id=ids["pad"],
        )  # fmt: skip
        model = BertForMaskedLM(config)
        with torch.no_grad():
            model.cls.predictions.bias.normal_()
        return model
    if family.startswith("llama"):
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=256, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            pad_token_id=ids["pad"], tie_word_embeddings=family == "llama-tied",
        )  # fmt: skip
        return LlamaForCausalLM(config)
    raise ValueError(family)


TOKENIZER_OF = {
    "t5": ("unigram", {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}),
    "t5-tied": ("unigram", {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}),
    "mbart": ("bytelevel_bpe", {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"}),
    "bert-mlm": ("wordpiece", {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}),
    "llama-tied": ("spiece_bpe", {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<unk>"}),
    "llama-untied": ("spiece_bpe", {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<unk>"}),
}
FAMILIES = tuple(TOKENIZER_OF)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    corpus, held_out = prose()
    root = tmp_path_factory.mktemp("text")
    (root / "corpus.txt").write_text("\n".join(corpus))
    (root / "held_out.txt").write_text("\n".join(held_out[:200]))
    return root, corpus, held_out[:200]


def _model_folder(family: str, root, corpus: list[str]):
    from transformers import PreTrainedTokenizerFast

    kind, specials = TOKENIZER_OF[family]
    backend = train_tokenizer(kind, corpus, vocab_size=VOCAB)
    tokens = {f"{name}_token": token for name, token in specials.items()}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)
    ids = {name: backend.token_to_id(token) for name, token in specials.items()}
    model = _tiny(family, backend.get_vocab_size(with_added_tokens=True), ids).eval()
    folder = root / family
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module", params=FAMILIES)
def compiled(request, texts, tmp_path_factory):
    root, corpus, _ = texts
    family = request.param
    folder, model, tokenizer = _model_folder(family, tmp_path_factory.mktemp(family), corpus)
    out = folder.parent / "trimmed"
    recipe = {
        "model": str(folder),
        "passes": [
            {
                "type": "vocab_trim",
                "languages": ["en"],
                "corpus": [str(root / "corpus.txt")],
                "rule": {"top_n": 700},
                "checks": {
                    "held_out": [str(root / "held_out.txt")],
                    "off_target": [str(root / "held_out.txt")],
                    "generate_prompts": 4,
                    "max_new_tokens": 6,
                    "logits_atol": 1e-5,
                },
            }
        ],
    }
    tokcomp.compile(recipe, out)
    return family, model, tokenizer, out


def _inputs(model, ids: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if model.config.is_encoder_decoder:
        batch.update(decoder_input_ids=input_ids, decoder_attention_mask=mask)
    return batch


def test_report_and_files(compiled):
    family, model, _, out = compiled
    report = read_json(out / "report.json")["vocab_trim"]
    checks = report["checks"]
    assert report["vocab"]["trimmed"] < report["vocab"]["original"]
    assert report["params"]["trimmed"] < report["params"]["original"]
    assert checks["held_out"]["round_trip_mismatches"] == 0 and checks["held_out"]["round_trip_exact"] > 0
    assert checks["logits"]["max_abs_diff"] <= 1e-5
    if model.can_generate():
        assert checks["generation"]["identical"] == checks["generation"]["prompts"] == 4
    assert checks["structure"]["untrimmed_vocab_tensors"] == 0
    vocab_map = load_vocab_map(out)
    assert len(vocab_map.old_ids) == report["vocab"]["trimmed"]
    assert vocab_map.old_size == report["vocab"]["original"]


def test_aliases_and_biases_sliced_consistently(compiled):
    family, model, _, out = compiled
    trimmed = tokcomp.load(out)
    kept = torch.from_numpy(load_vocab_map(out).old_ids)
    original_embedding = model.get_input_embeddings().weight
    assert torch.equal(trimmed.get_input_embeddings().weight, original_embedding[kept])
    assert torch.equal(trimmed.get_output_embeddings().weight, model.get_output_embeddings().weight[kept])
    tied_before = model.get_output_embeddings().weight is original_embedding
    assert (trimmed.get_output_embeddings().weight is trimmed.get_input_embeddings().weight) == tied_before
    if family == "mbart":
        assert torch.equal(trimmed.final_logits_bias, model.final_logits_bias[:, kept])
        shared = trimmed.model.shared.weight
        assert trimmed.model.encoder.embed_tokens.weight is shared and trimmed.model.decoder.embed_tokens.weight is shared
        assert trimmed.model.encoder.embed_tokens.embed_scale == model.model.encoder.embed_tokens.embed_scale
    if family == "bert-mlm":
        assert trimmed.cls.predictions.bias is trimmed.cls.predictions.decoder.bias
        assert torch.equal(trimmed.cls.predictions.bias, model.cls.predictions.bias[kept])
    if family.startswith("t5"):
        assert trimmed.encoder.embed_tokens.weight is trimmed.shared.weight is trimmed.decoder.embed_tokens.weight


def test_reload_logits_equal_original_on_kept_tokens(compiled, texts):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    family, model, tokenizer, out = compiled
    _, _, held_out = texts
    vocab_map = load_vocab_map(out)
    old2new = vocab_map.old_to_new
    old_ids = [x for x in tokenizer(held_out)["input_ids"] if all(old2new[i] >= 0 for i in x)][:8]
    assert old_ids, "no held-out text is fully kept"
    new_tokenizer = AutoTokenizer.from_pretrained(out)
    new_ids = [new_tokenizer(held_out)["input_ids"][i] for i, x in enumerate(tokenizer(held_out)["input_ids"]) if all(old2new[j] >= 0 for j in x)][:8]
    assert new_ids == [old2new[x].tolist() for x in old_ids]
    auto = AutoModelForSeq2SeqLM if model.config.is_encoder_decoder else AutoModelForMaskedLM if family == "bert-mlm" else AutoModelForCausalLM
    kept = torch.from_numpy(vocab_map.old_ids)
    with torch.inference_mode():
        expected = model(**_inputs(model, old_ids)).logits[..., kept]
        for reloaded in (tokcomp.load(out), auto.from_pretrained(out).eval()):
            got = reloaded(**_inputs(reloaded, new_ids)).logits
            mask = _inputs(model, old_ids)["attention_mask"].bool()
            assert (got[mask] - expected[mask]).abs().max() <= 1e-5


def test_config_and_generation_ids_remapped(compiled):
    family, model, _, out = compiled
    old2new = load_vocab_map(out).old_to_new
    trimmed = tokcomp.load(out)
    for field in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id"):
        before = getattr(model.config, field, None)
        if isinstance(before, int):
            assert getattr(trimmed.config, field) == old2new[before], field
    assert trimmed.config.vocab_size == trimmed.get_input_embeddings().weight.shape[0]
    if model.can_generate():
        saved = read_json(out / "generation_config.json")
        for field, value in saved.items():
            if field.endswith("token_id") and isinstance(value, int):
                assert value == old2new[getattr(model.generation_config, field)], field
