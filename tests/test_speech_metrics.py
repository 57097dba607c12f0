"""Speech metrics: edit distance, WER/CER with normalisation, and transcribe()'s refusals."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest

from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.errors import TokcompError
from tokcomp.evaluation.speech import (
    ClipScore,
    corpus_score,
    edit_distance,
    error_rates,
    normalize,
    score_clip,
    transcribe,
)


def _textbook_distance(a, b) -> int:
    """Wagner-Fischer with a full table: the reference for the vectorised rows."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


def test_edit_distance_known_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3 and edit_distance("", "") == 0
    assert edit_distance(["the", "cat", "sat"], ["the", "cat", "sat"]) == 0
    assert edit_distance(["the", "cat", "sat"], ["a", "cat", "sat", "down"]) == 2


def test_edit_distance_matches_the_textbook_table():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        assert edit_distance(a, b) == _textbook_distance(a, b), (a, b)


def test_wer_and_cer_on_known_strings():
    # One substitution, one deletion, one insertion over 6 reference words.
    score = score_clip("the quick brown fox jumps high", "the quack brown jumps very high", None)
    assert score == ClipScore(word_errors=3, words=6, char_errors=edit_distance(
        "the quick brown fox jumps high", "the quack brown jumps very high"), chars=30)  # fmt: skip
    total, clips = error_rates(["a b c d", "e f"], ["a b x d", "e f g h"], None)
    assert [c.word_errors for c in clips] == [1, 2]
    assert total.wer == pytest.approx(3 / 6) and total.words == 6 and total.clips == 2
    assert corpus_score(clips) == total


def test_english_normalisation_forgives_case_punctuation_and_spelled_numbers():
    assert normalize("Go forward 10 meters.", "en") == normalize("go forward ten meters", "en")
    assert score_clip("ten of clubs", "10 of clubs.", "en").word_errors == 0
    assert score_clip("And Mr. John Dashwood", "and mister john dashwood", "en").word_errors == 0


@pytest.mark.parametrize(
    "language, reference, hypothesis",
    [
        ("es", "Marque dos para llamar a otro numero", "Marque 2 para llamar a otro número."),
        ("es", "Por favor ingrese su contrasena", "Por favor, ingrese su contraseña."),
        ("fr", "Appuyez sur soixante et onze, puis sur quatre-vingt-dix-neuf", "Appuyez sur 71 puis sur 99."),
        ("fr", "deux cents participants", "200 participants"),
        ("ru", "нажмите решётку", "Нажмите решетку!"),
        ("ru", "две тысячи двадцать один", "2021"),
    ],
)
def test_other_languages_normalise_numbers_accents_and_punctuation(language, reference, hypothesis):
    assert normalize(reference, language) == normalize(hypothesis, language)


def test_french_keeps_accents_that_change_words():
    assert normalize("où", "fr") != normalize("ou", "fr")


def _model(multilingual: bool):
    config = SimpleNamespace(
        is_multilingual=multilingual, lang_to_id={"<|en|>": 1, "<|fr|>": 2} if multilingual else {}
    )
    return SimpleNamespace(generation_config=config)


def test_transcribe_refuses_what_the_model_cannot_do():
    short = SpeechClip("fr-clip", np.zeros(SAMPLE_RATE, np.float32), "bonjour", "fr")
    with pytest.raises(TokcompError, match="fr-clip.*English-only"):
        transcribe(_model(False), None, [short])
    with pytest.raises(TokcompError, match="no language 'xx'"):
        transcribe(_model(True), None, [short], language="xx")
    long = SpeechClip("long-clip", np.zeros(31 * SAMPLE_RATE, np.float32))
    with pytest.raises(TokcompError, match="long-clip is 31.0 s") as info:
        transcribe(_model(True), None, [long])
    assert "\n" not in str(info.value)


def test_transcribe_batches_per_language_and_keeps_clip_order():
    """A stand-in model that "transcribes" each clip's constant amplitude as text, to check the plumbing."""
    import torch

    calls = []

    class Model:
        generation_config = SimpleNamespace(is_multilingual=True, lang_to_id={"<|en|>": 1, "<|fr|>": 2})
        device, dtype = torch.device("cpu"), torch.float32

        def generate(self, features, **options):
            calls.append((features.shape[0], options.get("language")))
            return features[:, 0, :1].round().long()

    processor = SimpleNamespace(
        feature_extractor=lambda audio, sampling_rate, return_tensors: SimpleNamespace(
            input_features=torch.tensor(np.array([[a[:1]] for a in audio]))
        ),
        batch_decode=lambda tokens, skip_special_tokens: [f"clip {int(t)}" for t in tokens[:, 0]],
    )
    clips = [
        SpeechClip(f"c{i}", np.full(100, float(i), np.float32), language=("en", "fr", None)[i % 3]) for i in range(7)
    ]
    texts = transcribe(Model(), processor, clips, batch_size=2)
    assert texts == [f"clip {i}" for i in range(7)]
    assert sorted(calls, key=str) == sorted([(2, "en"), (1, "en"), (2, "fr"), (2, None)], key=str)
