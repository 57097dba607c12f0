"""A label-free score for compressed speech recognizers: KL on the original's own transcripts.

Each calibration clip is transcribed greedily by the original model; that transcript, behind
Whisper's prompt (start of transcript, language and task for a multilingual model, no
timestamps), is teacher-forced through the original and through the model being scored, and
the score is KL(original || model) of the next-token distributions at every position that
predicts a transcript token or its end, averaged per clip, then over clips. No reference
transcript is read: the original model is the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tokcomp.data.audio import SAMPLE_RATE, SpeechClip
from tokcomp.errors import RecipeError

DEFAULT_CLIPS = 16
DEFAULT_MAX_NEW_TOKENS = 64  # telephone prompts and commands are short; a cap bounds a looping decoder


def prompt_tokens(model: nn.Module, language: str | None) -> list[int]:
    """The decoder prompt Whisper's greedy generate() starts from (no timestamps) for a clip in `language`."""
    from tokcomp.runtime.onnx_whisper import prompt_ids

    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    return prompt_ids(model.generation_config.to_dict(), language, "transcribe" if multilingual else None)


def speech_clips_for(
    model: nn.Module, data: str | None, count: int, seed: int, split: str = "calibration"
) -> tuple[str, list[SpeechClip]]:
    """(name, clips): `data` (a speech source; zoo sources give their `split`), or by default the zoo's
    clips of that split in the model's languages, spread evenly over the sources that have any."""
    from tokcomp.evaluation.speech_eval import load_speech_data
    from tokcomp.zoo.speech import SOURCES, speech_clips

    if data is not None:
        name, clips = load_speech_data(data, count, seed, split=split)
        return (f"{name} ({split} split)" if name.startswith("zoo:") else name), clips
    def usable(source: str, limit: int) -> list[SpeechClip]:
        return [c for c in speech_clips(source, split, limit=limit) if knows_language(model, c.language)]

    # `count` clips shared as evenly as the sources allow (some have few or no clips in a split, or are in
    # languages the model lacks); each source gives its first clips by name hash (speech_clips' spread).
    available = {source: len(usable(source, count)) for source in SOURCES}
    quota = dict.fromkeys(SOURCES, 0)
    while sum(quota.values()) < count and any(quota[s] < available[s] for s in SOURCES):
        for source in SOURCES:
            if quota[source] < available[source] and sum(quota.values()) < count:
                quota[source] += 1
    chosen = {source: usable(source, quota[source]) for source in SOURCES if quota[source]}
    clips = [clip for group in chosen.values() for clip in group]
    return "zoo:" + "+".join(chosen) + f" ({split} split)", clips


def knows_language(model: nn.Module, language: str | None) -> bool:
    """Whether the model transcribes `language`: English-only models English, multilingual ones their languages."""
    config = model.generation_config
    if not getattr(config, "is_multilingual", False):
        return language in (None, "en")
    return language is None or f"<|{language}|>" in (getattr(config, "lang_to_id", None) or {})


def calibration_clips(model: nn.Module, data: str | None, count: int, seed: int) -> tuple[str, list[SpeechClip]]:
    return speech_clips_for(model, data, count, seed, "calibration")


@torch.inference_mode()
def _detected_language(model: nn.Module, processor, clip: SpeechClip) -> str:
    """The language a multilingual Whisper detects in a clip that names none (as generate() would)."""
    features = processor.feature_extractor(clip.audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    token = int(model.detect_language(features.to(model.device, model.dtype))[0])
    codes = {index: code for code, index in model.generation_config.lang_to_id.items()}
    return codes[token].strip("<|>")


class TranscriptFidelity:
    """KL(original || model) on the original's teacher-forced greedy transcripts of `clips`.

    Built from the model while it is still the original (no reducers installed); called later with
    reducers installed. Clips are batched by language (each language has its own prompt).
    """

    def __init__(
        self,
        original: nn.Module,
        processor,
        clips: Sequence[SpeechClip],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = 8,
    ):
        if not clips:
            raise RecipeError("no calibration clips to score the learned rates on", hint="give calibration.data")
        self.batches: list[tuple[Tensor, Tensor, list[Tensor], list[Tensor]]] = []
        self.transcripts: list[list[int]] = []
        multilingual = bool(getattr(original.generation_config, "is_multilingual", False))
        by_language: dict[str | None, list[SpeechClip]] = {}
        for clip in clips:
            if not knows_language(original, clip.language):
                raise RecipeError(
                    f"clip {clip.name} is in {clip.language!r}, a language this Whisper model does not transcribe",
                    hint="give clips in the model's languages (English only for *.en models)",
                )
            language = (clip.language or _detected_language(original, processor, clip)) if multilingual else None
            by_language.setdefault(language, []).append(clip)
        for language, group in by_language.items():
            for start in range(0, len(group), batch_size):
                self.batches.append(self._teacher(original, processor, group[start : start + batch_size],
                                                  language, max_new_tokens))  # fmt: skip

    @torch.inference_mode()
    def _teacher(self, original, processor, clips, language, max_new_tokens):
        config = original.generation_config
        features = processor.feature_extractor(
            [clip.audio for clip in clips], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(original.device, original.dtype)
        options = {"language": language, "task": "transcribe"} if language is not None else {}
        prompt = prompt_tokens(original, language)
        # The decoder's own length limit bounds a transcript too (prompt and end of text included).
        max_new_tokens = min(max_new_tokens, original.config.max_target_positions - len(prompt) - 1)
        generated = original.generate(features, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, **options)
        sequences, positions = [], []
        for row in generated.tolist():
            transcript = row[: row.index(config.eos_token_id)] if config.eos_token_id in row else row
            ended = len(transcript) < max_new_tokens
            self.transcripts.append(transcript)
            sequences.append(prompt + transcript + ([config.eos_token_id] if ended else []))
            # Logits at position i predict token i + 1: score every prediction after the prompt.
            positions.append(torch.arange(len(prompt) - 1, len(sequences[-1]) - 1))
        width = max(len(s) for s in sequences)
        ids = torch.tensor([s + [config.eos_token_id] * (width - len(s)) for s in sequences], device=features.device)
        # Right padding is invisible to the earlier positions of a causal decoder: no attention mask needed.
        logits = original(input_features=features, decoder_input_ids=ids).logits
        reference = [logits[i, p].float() for i, p in enumerate(positions)]
        return features, ids, positions, reference

    @torch.inference_mode()
    def per_clip(self, model: nn.Module) -> list[dict[str, float]]:
        """Per clip: KL (nats, mean over its positions) and top-1 agreement with the original."""
        from tokcomp.evaluation.decoder import distribution_fidelity

        scores = []
        for features, ids, positions, reference in self.batches:
            logits = model(input_features=features, decoder_input_ids=ids).logits.float()
            for i, (where, original) in enumerate(zip(positions, reference, strict=True)):
                scores.append(distribution_fidelity(original, logits[i, where]))
        return scores

    def __call__(self, model: nn.Module) -> float:
        """Mean KL over clips."""
        scores = self.per_clip(model)
        return sum(s["kl"] for s in scores) / len(scores)
