"""Speech baselines a Whisper token reducer has to beat: uniform pooling and window truncation.

- `uniform_pooling(model, tokens)`: the encoder runs whole; its output is average-pooled in
  time to `tokens` tokens (contiguous windows of near-equal length), each standing for its
  window (size = frames pooled), so the decoder's cross-attention is proportional. Same
  decoder-side token count as a reducer, none of its encoder savings.
- `uniform_pooling_in_encoder(model, tokens_per_layer)`: the same pooling applied inside
  the encoder, block by block, at a reducer's own counts: the same encoder FLOPs as the
  reducer, with merges that ignore the content.
- `truncated_window(model, audio_ctx=None)`: whisper.cpp's `--audio-ctx`: the encoder
  runs on the first N positions only. N is fixed, or (None) each clip's own length read
  off its features: the frames after the audio are the log-mel of zeros, one constant.

Each returns a copy of the model that transcribes with `generate(input_features)` as
usual; the original is not touched. All three use the Whisper adapter's cross-attention
(proportional attention, empty rows masked).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from tokcomp.errors import TokcompError
from tokcomp.passes.token_reduction import BlockSite
from tokcomp.reducers.apply import first, merge
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.rate import Rate
from tokcomp.surgery.adapters.common import adopt
from tokcomp.surgery.adapters.whisper import (
    SizeCarryingLayerNorm,
    WhisperAdapter,
    split_size_bias,
    whisper_encoder,
    with_size_bias,
)
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState, real_count

FRAMES_PER_TOKEN = 2  # the second convolution has stride 2


def uniform_groups(real: Tensor, kept: Tensor) -> Tensor:
    """Group of every token [B, N]: n real tokens into m = kept contiguous groups of near-equal length.

    Token i < n is in group floor(i m / n); padding goes to group N (nothing).
    """
    tokens = real.shape[1]
    n = real.sum(dim=-1, keepdim=True).clamp(min=1)
    index = torch.arange(tokens, device=real.device)
    group = index * kept[:, None] // n
    return torch.where(real, group, torch.full_like(group, tokens))


def merge_groups(x: Tensor, state: TokenState, group: Tensor, length: int) -> tuple[Tensor, TokenState]:
    """Merge each group of contiguous tokens into its first token (size-weighted mean), in time order."""
    tokens = group.shape[1]
    index = torch.arange(tokens, device=x.device)
    previous = torch.cat([torch.full_like(group[:, :1], -1), group[:, :-1]], dim=1)
    real = state.real if state.real is not None else torch.ones_like(state.protected)
    starts = real & (group != previous)
    kept = first(torch.where(starts, index, index + tokens).argsort(dim=-1), starts.sum(dim=-1), length, tokens)
    moving = real & ~starts
    slots = tokens - length
    src = first(torch.where(moving, index, index + tokens).argsort(dim=-1), moving.sum(dim=-1), max(slots, 1), tokens)
    dst = group.gather(1, src.clamp(max=tokens - 1)).clamp(max=length - 1)
    return merge(x, state, kept, src, dst, null=True)


class UniformPool(Reducer):
    """Merge contiguous windows of near-equal length, ignoring the content (a baseline, not a method)."""

    kind = "uniform_pool"

    @staticmethod
    def limit(reducible):
        return reducible - 1 if isinstance(reducible, int) else (reducible - 1).clamp(min=0)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        keep = torch.as_tensor(real_count(state, tokens) - self.per_sample_removal(state, tokens), device=x.device)
        real = state.real if state.real is not None else torch.ones_like(state.protected)
        group = uniform_groups(real, keep.expand(x.shape[0]))
        return merge_groups(x, state, group, self.kept_tokens(tokens))


class PoolingLayerNorm(SizeCarryingLayerNorm):
    """The encoder's final LayerNorm, then average pooling in time to `tokens` tokens with their log sizes."""

    def __init__(self, *args, tokens: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens = tokens

    def forward(self, states: Tensor) -> Tensor:
        x, bias = split_size_bias(states, self.normalized_shape[0])
        if bias is not None:
            raise TokcompError("uniform pooling expects the original encoder", hint="pool a model without reduction")
        y = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        real = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        state = TokenState.initial(y, real, 0, trace_source=False)
        group = uniform_groups(real, torch.full((y.shape[0],), self.tokens, device=y.device))
        pooled, pooled_state = merge_groups(y, state, group, self.tokens)
        return with_size_bias(pooled, torch.log(pooled_state.size))


def _whisper_copy(model: nn.Module) -> nn.Module:
    adapter = WhisperAdapter()
    if not adapter.matches(model):
        raise TokcompError(
            f"speech baselines need a Whisper model, got {type(model).__name__}",
            hint="pass a WhisperForConditionalGeneration",
        )
    model = copy.deepcopy(model)
    adapter.prepare_model(model)  # the decoder reads sizes and masks from the encoder output
    return model


def uniform_pooling(model: nn.Module, tokens: int) -> nn.Module:
    """A copy of `model` whose encoder output is average-pooled in time to `tokens` tokens."""
    window = int(model.config.max_source_positions)
    if not 1 <= tokens <= window:
        raise TokcompError(f"cannot pool {window} encoder tokens to {tokens}", hint=f"choose 1 to {window} tokens")
    model = _whisper_copy(model)
    encoder = whisper_encoder(model)
    norm = encoder.layer_norm
    pooled = PoolingLayerNorm(norm.normalized_shape, eps=norm.eps, tokens=tokens)
    pooled.weight, pooled.bias = norm.weight, norm.bias
    encoder.layer_norm = pooled
    return model


def uniform_pooling_in_encoder(model: nn.Module, tokens_per_layer: list[int]) -> nn.Module:
    """A copy of `model` whose encoder pools uniformly in time so block l keeps tokens_per_layer[l]."""
    model = _whisper_copy(model)
    site = BlockSite.prepare(model, "uniform_pool")
    before = int(model.config.max_source_positions)
    if len(tokens_per_layer) != len(site.blocks):
        raise TokcompError(f"{len(tokens_per_layer)} token counts for {len(site.blocks)} encoder blocks")
    reducers = []
    for after in tokens_per_layer:
        if not 1 <= after <= before:
            raise TokcompError(f"token counts must not grow and stay >= 1, got {tokens_per_layer}")
        reducers.append(UniformPool(Rate(before - after, before), 0) if after < before else None)
        before = after
    site.install(reducers, proportional_attention=True)
    return model


def audio_tokens(input_features: Tensor) -> Tensor:
    """Encoder positions each clip's audio covers [B]: frames up to its last frame that is not padding.

    Whisper's feature extractor pads the audio with zeros; their log-mel is the clip's floor
    value in every bin, so trailing frames equal to it everywhere are padding (or silence).
    """
    floor = input_features.amin(dim=(1, 2), keepdim=True)
    audible = (input_features > floor + 1e-6).any(dim=1)  # [B, frames]
    frames = input_features.shape[-1]
    index = torch.arange(1, frames + 1, device=input_features.device)
    last = torch.where(audible, index, torch.zeros_like(index)).amax(dim=-1)
    return ((last + FRAMES_PER_TOKEN - 1) // FRAMES_PER_TOKEN).clamp(min=1)


class TruncatedEncoder(nn.Module):
    """Runs a Whisper encoder on the first N positions of its window only (whisper.cpp's audio_ctx).

    N is `audio_ctx`, or each clip's own length (`audio_tokens`); a batch runs at its longest
    clip's N, the shorter clips' extra positions masked in the encoder and in the decoder.
    """

    def __init__(self, encoder: nn.Module, audio_ctx: int | None):
        super().__init__()
        # The encoder's own parts under their own names (generate reads conv strides off them).
        adopt(self, encoder, ["conv1", "conv2", "embed_positions", "layers", "layer_norm"])
        self.config = encoder.config
        self.audio_ctx = audio_ctx

    def forward(self, input_features: Tensor, attention_mask=None, **kwargs) -> BaseModelOutput:
        if self.audio_ctx is None:
            lengths = audio_tokens(input_features)
        else:
            lengths = torch.full((input_features.shape[0],), self.audio_ctx, device=input_features.device)
        tokens = int(lengths.max())
        # Frames past a clip's own window read as the convolutions' zero padding, as if it ran alone.
        frames = torch.arange(FRAMES_PER_TOKEN * tokens, device=input_features.device)
        inside = (frames < FRAMES_PER_TOKEN * lengths[:, None])[:, None, :]
        x = input_features[..., : FRAMES_PER_TOKEN * tokens] * inside
        x = nn.functional.gelu(self.conv1(x)) * inside
        x = nn.functional.gelu(self.conv2(x)).permute(0, 2, 1)
        x = x + self.embed_positions.weight[:tokens]
        real = torch.arange(tokens, device=x.device) < lengths[:, None]
        key_bias = torch.where(real, 0.0, torch.finfo(x.dtype).min).to(x.dtype)
        mask = key_bias[:, None, None, :].expand(-1, 1, tokens, tokens)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.layer_norm(x)
        return BaseModelOutput(last_hidden_state=with_size_bias(x, key_bias))

    def get_input_embeddings(self):
        return self.conv1


def truncated_window(model: nn.Module, audio_ctx: int | None = None) -> nn.Module:
    """A copy of `model` whose encoder runs on the first `audio_ctx` positions (None: each clip's length)."""
    window = int(model.config.max_source_positions)
    if audio_ctx is not None and not 1 <= audio_ctx <= window:
        raise TokcompError(f"audio_ctx {audio_ctx} is outside the encoder window", hint=f"choose 1 to {window}")
    model = _whisper_copy(model)
    whisper = model.model if hasattr(model, "model") else model
    whisper.encoder = TruncatedEncoder(whisper.encoder, audio_ctx)
    return model


def tokens_for_seconds(seconds: float) -> int:
    """Encoder positions covering `seconds` of audio (50 per second)."""
    return max(1, math.ceil(seconds * 50))
