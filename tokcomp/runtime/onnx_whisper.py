"""Whisper transcription from a checkpoint's validated ONNX export, on ONNX Runtime alone.

    ids = transcribe_onnx("runs/whisper_tome", input_features, max_new_tokens=96)   # after `tokcomp export`
    texts = processor.batch_decode(ids, skip_special_tokens=True)

Greedy decoding as transformers' `WhisperForConditionalGeneration.generate` does it for clips
of up to 30 s without timestamps, read from the checkpoint's generation_config.json:

- the forced prompt (`prompt_ids`): start of transcript, then for a multilingual model the
  language (given, or detected from the first decoder step over the language tokens, per
  clip) and the task, then <|notimestamps|>; an English-only model's legacy
  `forced_decoder_ids` are honoured the way transformers does;
- `suppress_tokens` are never chosen, `begin_suppress_tokens` not as the first token;
- each clip stops at end-of-text; at most `max_new_tokens` tokens (default: up to the
  decoder's `max_target_positions`, prompt included).

The encoder (model.onnx) runs once; decoder_model.onnx runs the prompt and returns every
layer's self- and cross-attention keys and values; decoder_with_past_model.onnx then feeds
one token per step with the cache. Returns each clip's generated token ids (prompt and
end-of-text excluded), which is what `generate` returns before padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokcomp.errors import CheckpointError, TokcompError

COMPONENTS = {"encoder": "model.onnx", "decoder": "decoder_model.onnx", "decoder_with_past": "decoder_with_past_model.onnx"}


def prompt_ids(generation: dict[str, Any], language: str | None = None, task: str | None = None) -> list[int | None]:
    """The forced decoder prompt, as transformers' Whisper builds it for short-form greedy decoding.

    A multilingual model given no language gets None in the language slot (index 1): detected per clip.
    """
    prompt: list[int | None] = [generation["decoder_start_token_id"]]
    languages = generation.get("lang_to_id") or {}
    if language is None and task is None:
        forced = sorted(generation.get("forced_decoder_ids") or [])  # legacy [[position, id], ...]
        for position, token in forced:
            if position != len(prompt):
                raise TokcompError(f"forced_decoder_ids {forced} do not follow Whisper's prompt pattern")
            prompt.append(token)
    if languages and (language is not None or len(prompt) == 1 or prompt[1] is None):
        language_id = None if language is None else _language_id(languages, language)
        prompt[1:2] = [language_id]
    elif not languages and language not in (None, "en"):
        raise TokcompError(f"this Whisper model is English-only; got language {language!r}")
    tasks = generation.get("task_to_id") or {}
    if task is not None and (tasks or task != "transcribe"):  # English-only models only transcribe
        if task not in tasks:
            raise TokcompError(f"this Whisper model has no task {task!r}", hint=f"choose from {', '.join(tasks) or 'none'}")
        prompt.append(tasks[task])
    elif language is not None and tasks and not any(t in tasks.values() for t in prompt):
        prompt.append(tasks["transcribe"])  # a language without a task transcribes
    no_timestamps = generation.get("no_timestamps_token_id")
    if no_timestamps is not None and prompt[-1] != no_timestamps:
        prompt.append(no_timestamps)
    return prompt if languages else [t for t in prompt if t is not None]


def _language_id(languages: dict[str, int], language: str) -> int:
    code = language if language.startswith("<|") else f"<|{language.lower()}|>"
    if code not in languages:
        raise TokcompError(f"this Whisper model has no language {language!r}", hint="give an ISO 639-1 code, e.g. en")
    return languages[code]


class OnnxWhisper:
    """The three graphs of a Whisper export on ONNX Runtime (CPU), with the checkpoint's generation settings."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        from tokcomp.checkpoint import read_state
        from tokcomp.fileio import read_json

        self.folder = Path(folder)
        files = {e.get("file"): e for e in read_state(self.folder).exports if e.get("format") == "onnx"}
        missing = [f for f in COMPONENTS.values() if f not in files or not (self.folder / f).is_file()]
        if missing:
            raise CheckpointError(
                f"{self.folder} has no ONNX Whisper export ({', '.join(missing)} missing)",
                hint=f"run `tokcomp export {self.folder} --format onnx`",
            )
        config = read_json(self.folder / "config.json")
        config = config.get("base_config", config)  # a tokcomp checkpoint wraps the model's own config
        settings = self.folder / "generation_config.json"
        self.generation = {**config, **(read_json(settings) if settings.is_file() else {})}
        self.max_positions = int(config["max_target_positions"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            name: ort.InferenceSession(str(self.folder / file), options, providers=["CPUExecutionProvider"])
            for name, file in COMPONENTS.items()
        }
        # past_key_values.{i}.decoder.key/value, .encoder.key/value per layer, after input_ids and encoder_hidden_states
        self.past_names = [i.name for i in self.sessions["decoder_with_past"].get_inputs()][2:]
        self.layers = len(self.past_names) // 4

    def encode(self, input_features: np.ndarray) -> np.ndarray:
        """[batch, tokens, C + 1] encoder states, the last channel log(size)."""
        return self.sessions["encoder"].run(None, {"input_features": np.asarray(input_features, np.float32)})[0]

    def generate(
        self,
        input_features: np.ndarray,
        max_new_tokens: int | None = None,
        language: str | None = None,
        task: str | None = None,
    ) -> list[list[int]]:
        """Greedy token ids per clip (prompt and end-of-text excluded)."""
        states = self.encode(input_features)
        batch = states.shape[0]
        prompt = prompt_ids(self.generation, language, task)
        rows = np.array([[t if t is not None else -1 for t in prompt]] * batch, dtype=np.int64)
        if None in prompt:
            rows[:, prompt.index(None)] = self._detect_language(states)
        budget = self.max_positions - rows.shape[1]
        budget = budget if max_new_tokens is None else min(max_new_tokens, budget)
        eos = self.generation["eos_token_id"]
        logits, cache = self._first(rows, states)
        tokens = np.zeros((batch, 0), np.int64)
        done = np.zeros(batch, bool)
        for step in range(budget):
            chosen = np.argmax(self._suppress(logits, step), axis=-1)
            chosen = np.where(done, eos, chosen)
            tokens = np.concatenate([tokens, chosen[:, None]], axis=1)
            done |= chosen == eos
            if done.all() or step + 1 == budget:
                break
            logits, cache = self._step(chosen, states, cache)
        return [_until(row, eos) for row in tokens.tolist()]

    def _first(self, ids: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *present = self.sessions["decoder"].run(None, {"input_ids": ids, "encoder_hidden_states": states})
        return logits[:, -1], present

    def _step(self, ids: np.ndarray, states: np.ndarray, cache: list[np.ndarray]):
        feeds = {"input_ids": ids[:, None], "encoder_hidden_states": states}
        feeds |= dict(zip(self.past_names, cache, strict=True))
        logits, *own = self.sessions["decoder_with_past"].run(None, feeds)
        for i in range(self.layers):  # cross-attention keys and values stay; self-attention ones grow
            cache[4 * i : 4 * i + 2] = own[2 * i : 2 * i + 2]
        return logits[:, -1], cache

    def _suppress(self, logits: np.ndarray, step: int) -> np.ndarray:
        logits = logits.astype(np.float32, copy=True)
        for key, applies in (("suppress_tokens", True), ("begin_suppress_tokens", step == 0)):
            if applies and self.generation.get(key):
                logits[:, self.generation[key]] = -np.inf
        return logits

    def _detect_language(self, states: np.ndarray) -> np.ndarray:
        """transformers' detect_language: the likeliest language token after start-of-transcript, per clip."""
        start = np.full((states.shape[0], 1), self.generation["decoder_start_token_id"], np.int64)
        logits, _ = self._first(start, states)
        languages = np.array(sorted(self.generation["lang_to_id"].values()))
        return languages[np.argmax(logits[:, languages], axis=-1)]


def _until(row: Sequence[int], eos: int) -> list[int]:
    return list(row[: row.index(eos)]) if eos in row else list(row)


def transcribe_onnx(
    export_dir: str | Path,
    input_features: np.ndarray,
    max_new_tokens: int | None = None,
    language: str | None = None,
    task: str | None = None,
    threads: int | None = None,
) -> list[list[int]]:
    """Greedy token ids per clip from the checkpoint's ONNX export (see the module docstring)."""
    return OnnxWhisper(export_dir, threads).generate(input_features, max_new_tokens, language, task)
