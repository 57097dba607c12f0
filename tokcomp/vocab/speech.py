"""What vocab_trim needs beyond text models for Whisper-style speech models.

- The tokenizer sits inside a processor (WhisperProcessor: feature extractor + tokenizer):
  the trim works on the tokenizer and a processor of the same class is rebuilt around the
  trimmed one, so `processor.decode` and `processor(audio=...)` keep working.
- The model reads log-mel features, not token ids: the checks feed the same fixed
  features to the model before and after the surgery. Any features do for the proof: it is
  about the decoder's outputs on kept tokens, which must not depend on the trim at all.

Whisper's timestamp decoding counts from `<|notimestamps|>` + 1 and the tokenizer's last
special id + 1; both stay valid because every added token is kept and ids keep their order.
"""

from __future__ import annotations

import torch

FEATURE_SEED = 0  # the check features are the same before and after the surgery


def tokenizer_of(processor):
    """The text tokenizer inside a processor (WhisperProcessor), or the processor itself."""
    inner = getattr(processor, "tokenizer", None)
    if inner is not None and getattr(processor, "feature_extractor", None) is not None:
        return inner
    return processor


def with_tokenizer(processor, tokenizer):
    """A processor of the same class around the trimmed `tokenizer` (or the tokenizer itself for text models)."""
    if tokenizer_of(processor) is processor:
        return tokenizer
    return type(processor)(feature_extractor=processor.feature_extractor, tokenizer=tokenizer)


def reads_features(model) -> bool:
    """A speech encoder-decoder: the encoder input is `input_features`, the text goes to the decoder."""
    return getattr(model, "main_input_name", None) == "input_features"


def check_features(model, batch: int) -> torch.Tensor:
    """Fixed standard-normal log-mel features of one window for `batch` samples (encoder input of the checks)."""
    config = model.config
    frames = 2 * config.max_source_positions  # the second convolution has stride 2
    generator = torch.Generator().manual_seed(FEATURE_SEED)
    features = torch.randn(1, config.num_mel_bins, frames, generator=generator)
    return features.expand(batch, -1, -1).to(model.device, model.dtype)
