"""vocab_trim on Whisper: special, language, task and timestamp tokens kept, generation config remapped.

Fast tests: a tiny random multilingual Whisper with a byte-level BPE tokenizer trained here on
Python-documentation prose, Whisper's special tokens and timestamp tokens added after it, and a
generation config built the way the zoo builds it. Slow test: zoo:whisper-base trimmed to
English by recipes/vocab_trim_whisper_en.yaml, transcribing the real English evaluation clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoProcessor,
    LogitsProcessorList,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

import tokcomp
from tests.test_vocab_tokenizers import prose
from tokcomp.errors import ZooError
from tokcomp.fileio import read_json
from tokcomp.vocab import load_vocab_map
from tokcomp.vocab.checks import _KeepOnly
from tokcomp.zoo import whisper as zoo_whisper

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|de|>", "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
STAMPS = 51  # <|0.00|> .. <|1.00|>: the tiny model's 1 s window
WINDOW = 50  # encoder positions (100 mel frames)


def _tokenizer(corpus: list[str]) -> WhisperTokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    backend.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(STAMPS)])
    return WhisperTokenizer(
        tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", predict_timestamps=False, language=None, task=None,
    )  # fmt: skip


def _model(tokenizer: WhisperTokenizer, folder: Path) -> WhisperForConditionalGeneration:
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    tokens = zoo_whisper.special_tokens(folder / "tokenizer.json")
    tokens["multilingual"] = True  # decided by the end-of-text id for the real vocabularies
    eot, vocab = tokens["eot"], len(tokenizer)
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=WINDOW,
        max_target_positions=64, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=tokens["sot"], tie_word_embeddings=True, begin_suppress_tokens=None, suppress_tokens=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    space = tokenizer.convert_tokens_to_ids("Ġ")
    # Suppress a few ordinary tokens (the real lists hold symbols and a few words) and two specials.
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in ("(", ")", "Ġthe")] + [
        tokens["translate"],
        tokens["sot_lm"],
    ]
    ct2 = {"suppress_ids": suppress, "suppress_ids_begin": [space, eot], "alignment_heads": [[1, 0]]}
    model.generation_config = zoo_whisper.generation_config(tokens, ct2, config)
    model.generation_config.max_length = 24
    return model


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    corpus, held_out = prose()
    root = tmp_path_factory.mktemp("whisper-vocab")
    (root / "corpus.txt").write_text("\n".join(corpus[:300]))
    (root / "held_out.txt").write_text("\n".join(held_out[:60]))
    folder = root / "tiny-whisper"
    folder.mkdir()
    tokenizer = _tokenizer(corpus)
    model = _model(tokenizer, folder)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=16, chunk_length=1), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    recipe = {
        "model": str(folder),
        "passes": [
            {
                "type": "vocab_trim",
                "languages": ["en"],
                "corpus": [str(root / "corpus.txt")],
                "rule": {"top_n": 300},
                "checks": {
                    "held_out": [str(root / "held_out.txt")],
                    "off_target": [str(root / "held_out.txt")],
                    "generate_prompts": 4,
                    "max_new_tokens": 6,
                },
            }
        ],
    }
    out = tokcomp.compile(recipe, root / "trimmed")
    return model, processor, out


def _features(batch: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 16, 2 * WINDOW, generator=torch.Generator().manual_seed(seed))


def test_trimmed_model_and_report(compiled):
    model, _, out = compiled
    report = read_json(out / "report.json")["vocab_trim"]
    assert report["vocab"]["trimmed"] < report["vocab"]["original"] == model.config.vocab_size
    assert report["params"]["trimmed"] < report["params"]["original"]
    assert report["checks"]["logits"]["max_abs_diff"] <= 1e-5
    assert report["checks"]["generation"]["identical"] == report["checks"]["generation"]["prompts"] == 4
    trimmed = tokcomp.load(out)
    assert isinstance(trimmed, WhisperForConditionalGeneration)
    kept = torch.from_numpy(load_vocab_map(out).old_ids)
    # Embedding and output projection trimmed together and still one tensor.
    assert trimmed.proj_out.weight is trimmed.model.decoder.embed_tokens.weight
    assert torch.equal(trimmed.proj_out.weight, model.proj_out.weight[kept])
    assert trimmed.config.vocab_size == len(kept) == trimmed.proj_out.out_features


def test_every_special_and_timestamp_token_is_kept_in_order(compiled):
    _, processor, out = compiled
    new = AutoProcessor.from_pretrained(out)
    assert isinstance(new, WhisperProcessor)
    old_tok, new_tok = processor.tokenizer, new.tokenizer
    added = SPECIALS + [f"<|{i * 0.02:.2f}|>" for i in range(STAMPS)]
    new_ids = new_tok.convert_tokens_to_ids(added)
    # Contiguous after the last text token, in the original order: timestamp arithmetic still holds.
    assert new_ids == list(range(new_ids[0], new_ids[0] + len(added)))
    assert new_ids[-1] == len(new_tok) - 1
    assert new_tok.convert_tokens_to_ids("<|notimestamps|>") + 1 == new_tok.convert_tokens_to_ids("<|0.00|>")
    assert len(new_tok) < len(old_tok)


def test_generation_config_ids_name_the_same_tokens(compiled):
    model, processor, out = compiled
    old, new = model.generation_config, tokcomp.load(out).generation_config
    old_tok, new_tok = processor.tokenizer, AutoProcessor.from_pretrained(out).tokenizer

    def names(tok, ids):
        return tok.convert_ids_to_tokens(list(ids))

    for field in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "no_timestamps_token_id",
                  "prev_sot_token_id"):  # fmt: skip
        assert names(new_tok, [getattr(new, field)]) == names(old_tok, [getattr(old, field)]), field
    for field in ("suppress_tokens", "begin_suppress_tokens"):
        assert names(new_tok, getattr(new, field)) == names(old_tok, getattr(old, field)), field
    assert new.lang_to_id.keys() == old.lang_to_id.keys()
    assert all(names(new_tok, [new.lang_to_id[k]]) == [k] for k in new.lang_to_id)
    assert {k: names(new_tok, [v]) for k, v in new.task_to_id.items()} == {
        k: names(old_tok, [v]) for k, v in old.task_to_id.items()
    }


@pytest.mark.parametrize("language", ["en", "fr", None])  # None: the language is detected
def test_greedy_transcripts_equal_the_original_restricted_to_kept_tokens(compiled, language):
    model, processor, out = compiled
    trimmed, new = tokcomp.load(out), AutoProcessor.from_pretrained(out)
    vocab_map = load_vocab_map(out)
    keep = LogitsProcessorList([_KeepOnly(vocab_map.old_ids, model.config.vocab_size)])
    x = _features(3)
    options = {"language": language, "task": "transcribe"} if language else {}
    with torch.inference_mode():
        expected = model.generate(x, max_new_tokens=8, do_sample=False, logits_processor=keep, **options)
        got = trimmed.generate(x, max_new_tokens=8, do_sample=False, **options)
    assert torch.equal(got, torch.from_numpy(vocab_map.old_to_new[expected.numpy()]))
    assert new.batch_decode(got, skip_special_tokens=True) == processor.batch_decode(expected, skip_special_tokens=True)
    assert new.batch_decode(got) == processor.batch_decode(expected)  # with the special tokens


def test_dict_valued_id_maps_are_found_and_remapped():
    from transformers import GenerationConfig

    from tokcomp.vocab.ids import config_token_ids, remap_config_ids

    class Holder:
        config = WhisperConfig(vocab_size=20, decoder_start_token_id=5)
        generation_config = GenerationConfig(lang_to_id={"<|en|>": 7, "<|fr|>": 8}, task_to_id={"transcribe": 9})

    found = config_token_ids(Holder)
    assert found["generation_config.lang_to_id"] == [7, 8] and found["generation_config.task_to_id"] == [9]
    remap_config_ids(Holder, lambda field, i: i - 1)
    assert Holder.generation_config.lang_to_id == {"<|en|>": 6, "<|fr|>": 7}
    assert Holder.generation_config.task_to_id == {"transcribe": 8}


# ---------------------------------------------------------------- real model, real speech

ZOO_BASE = Path.home() / ".cache" / "tokcomp" / "zoo" / "whisper-base"
RECIPE = Path(__file__).parent.parent / "recipes" / "vocab_trim_whisper_en.yaml"


@pytest.mark.slow
@pytest.mark.heavy
def test_real_whisper_base_trimmed_to_english_transcribes_the_same(tmp_path):
    from tokcomp.evaluation.speech import transcribe
    from tokcomp.zoo.speech import speech_clips

    if not ZOO_BASE.is_dir():
        pytest.skip("zoo:whisper-base is not built")
    out = tokcomp.compile(str(RECIPE), tmp_path / "trimmed")
    report = read_json(out / "report.json")["vocab_trim"]
    assert report["params"]["trimmed"] < 0.9 * report["params"]["original"]
    original = WhisperForConditionalGeneration.from_pretrained(ZOO_BASE).eval()
    processor = AutoProcessor.from_pretrained(ZOO_BASE)
    trimmed, new = tokcomp.load(out).eval(), AutoProcessor.from_pretrained(out)
    clips = speech_clips("librivox") + speech_clips("commands", limit=3) + speech_clips("asterisk-en", limit=4)
    before = transcribe(original, processor, clips)
    after = transcribe(trimmed, new, clips)
    assert after == before
    assert all(before)
    old2new = load_vocab_map(out).old_to_new
    ids = processor.tokenizer(before, add_special_tokens=False)["input_ids"]
    assert all((old2new[np.asarray(x)] >= 0).all() for x in ids)  # every token of the transcripts was kept
    assert (
        json.loads((out / "generation_config.json").read_text())["lang_to_id"]["<|en|>"]
        == trimmed.generation_config.lang_to_id["<|en|>"]
    )


def test_a_missing_first_merge_is_restored_in_rank_order():
    # tiktoken layout: merge k makes token 256 + k. faster-whisper-base's tokenizer.json lacks merge 0.
    vocab = {chr(0x100 + i): i for i in range(256)} | {"Ġt": 256, "Ġa": 257, "Ġth": 258, "Ġthe": 259, "": 260}
    vocab |= {"Ġ": vocab.pop(chr(0x100 + 32)), "t": vocab.pop(chr(0x100 + 116)), "a": vocab.pop(chr(0x100 + 97))}
    vocab |= {"h": vocab.pop(chr(0x100 + 104)), "e": vocab.pop(chr(0x100 + 101))}
    merges = ["Ġ a", "Ġt h", "Ġth e"]
    restored = zoo_whisper.restore_missing_merges(vocab, merges, special=set())
    assert restored == [["Ġ", "t"], ["Ġ", "a"], ["Ġt", "h"], ["Ġth", "e"]]
    # Ranks follow the ids, whatever order the file lists them in.
    assert zoo_whisper.restore_missing_merges(vocab, ["Ġt h", "Ġ t", "Ġth e", "Ġ a"], special=set()) == restored
    # A lost merge with two possible splits cannot be rebuilt: refused, not guessed.
    ambiguous = dict(vocab, th=255, Ġ=254)
    with pytest.raises(ZooError, match="cannot rebuild the BPE merge of token 'Ġth'"):
        zoo_whisper.restore_missing_merges(ambiguous, ["Ġ t", "Ġ a", "Ġth e"], special=set())


@pytest.mark.slow
@pytest.mark.heavy
def test_zoo_whisper_base_tokenizer_encodes_like_the_model_writes():
    from tokenizers import Tokenizer

    if not ZOO_BASE.is_dir():
        pytest.skip("zoo:whisper-base is not built")
    tokenizer = Tokenizer.from_file(str(ZOO_BASE / "tokenizer.json"))
    assert tokenizer.encode(" to the", add_special_tokens=False).tokens == ["Ġto", "Ġthe"]
