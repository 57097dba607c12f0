"""Whisper (WhisperForConditionalGeneration, WhisperModel): the encoder reduces, the decoder reads sizes.

Encoder layers live in `<model>.encoder.layers` (WhisperEncoderLayer: self_attn{q,k,v,out}_proj,
self_attn_layer_norm, fc1, fc2, final_layer_norm; pre-LN). Every one of the 1,500 positions
is a token the model was trained with (the 30 s window), so nothing is protected (no CLS)
and nothing is padding; tokens go back to time order after every reduction.

How the merged tokens' sizes reach the decoder, with no side channel:

    last encoder block   returns [x (C) | b]: b = log(size) of each token, the lowest float
                         for an empty row (a sample that kept fewer tokens than the batch)
    encoder.layer_norm   normalises x and passes b through (same weight and bias names)
    decoder encoder_attn strips b from the encoder states and adds it to its key logits:
                         proportional attention; empty rows get no attention

The bias travels in `encoder_outputs.last_hidden_state`, which `generate` hands the decoder
at every step, so `model.generate(input_features)` works unchanged, the cross-attention
K/V cache stays valid (keys and values come from x alone) and the whole thing is a tensor
program (torch.compile, export): nothing is read from Python state at run time. An encoder
state of the model's own width (C) is read as before: sizes 1, nothing masked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.models.whisper.modeling_whisper import WhisperAttention

from tokcomp.errors import RecipeError
from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.adapters.common import adopt
from tokcomp.surgery.attention import AttentionInfo, attend, split_heads
from tokcomp.surgery.block import TokenBlock
from tokcomp.surgery.state import TokenState


def size_bias(state: TokenState, dtype: torch.dtype) -> Tensor:
    """[B, N] additive key bias of the encoder tokens: log(size), the lowest float for empty rows."""
    return state.attention_bias(proportional=True, dtype=dtype)[:, 0, 0, :]


def with_size_bias(x: Tensor, bias: Tensor) -> Tensor:
    """Encoder states [B, N, C] and their key bias [B, N] as one tensor [B, N, C + 1]."""
    return torch.cat([x, bias.to(x.dtype)[..., None]], dim=-1)


def split_size_bias(states: Tensor, hidden_size: int) -> tuple[Tensor, Tensor | None]:
    """Inverse of `with_size_bias`; plain states of width C come back with no bias."""
    if states.shape[-1] == hidden_size:
        return states, None
    if states.shape[-1] != hidden_size + 1:
        raise ValueError(f"encoder states of width {states.shape[-1]}; expected {hidden_size} or {hidden_size + 1}")
    return states[..., :hidden_size], states[..., hidden_size]


class WhisperTokenBlock(TokenBlock):
    """WhisperEncoderLayer: pre-LN attention and MLP; the last block appends the size bias channel."""

    def __init__(self, original: nn.Module, hidden_size: int, index: int, num_blocks: int):
        super().__init__(hidden_size, index, num_blocks, padded=True, protected=0)
        adopt(self, original, ["self_attn", "self_attn_layer_norm", "activation_fn", "fc1", "fc2", "final_layer_norm"])
        self.dropout_p = original.dropout
        self.activation_dropout_p = original.activation_dropout
        self.preserve_order = True  # time order: the decoder's cross-attention is order-free, but A-ToMe-style
        # neighbours and the truncation baseline rely on it, and merge maps read left to right

    def attention_residual(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, AttentionInfo]:
        attn = self.self_attn
        h = self.self_attn_layer_norm(x)
        # Whisper scales the query before the product (its rounding differs from scaling the logits).
        q = split_heads(attn.q_proj(h) * attn.scaling, attn.head_dim)
        k = split_heads(attn.k_proj(h), attn.head_dim)
        v = split_heads(attn.v_proj(h), attn.head_dim)
        out, info = attend(q, k, v, bias, 1.0, attn.dropout if self.training else 0.0)
        out = nn.functional.dropout(attn.out_proj(out), p=self.dropout_p, training=self.training)
        return x + out, info

    def mlp_residual(self, x: Tensor) -> Tensor:
        h = self.activation_fn(self.fc1(self.final_layer_norm(x)))
        h = nn.functional.dropout(h, p=self.activation_dropout_p, training=self.training)
        h = nn.functional.dropout(self.fc2(h), p=self.dropout_p, training=self.training)
        x = x + h
        if x.dtype == torch.float16:  # as WhisperEncoderLayer
            clamp = torch.finfo(x.dtype).max - 1000
            x = torch.clamp(x, min=-clamp, max=clamp)
        return x

    def _leave(self, x: Tensor, state: TokenState) -> Tensor:
        out = super()._leave(x, state)
        return with_size_bias(out, size_bias(state, x.dtype)) if self.is_last else out


class SizeCarryingLayerNorm(nn.LayerNorm):
    """The encoder's final LayerNorm over x, passing the size bias channel through untouched."""

    @classmethod
    def adopt(cls, original: nn.LayerNorm) -> SizeCarryingLayerNorm:
        norm = cls(original.normalized_shape, eps=original.eps, elementwise_affine=original.elementwise_affine)
        norm.weight, norm.bias = original.weight, original.bias  # same parameters, same state-dict keys
        return norm

    def forward(self, states: Tensor) -> Tensor:
        x, bias = split_size_bias(states, self.normalized_shape[0])
        y = super().forward(x)
        return y if bias is None else with_size_bias(y, bias)


class SizedCrossAttention(WhisperAttention):
    """Decoder cross-attention over merged encoder tokens: log(size) added to the key logits."""

    @classmethod
    def adopt(cls, original: WhisperAttention) -> SizedCrossAttention:
        new = cls(
            original.embed_dim,
            original.num_heads,
            dropout=original.dropout,
            is_decoder=original.is_decoder,
            bias=original.q_proj.bias is not None,
            is_causal=original.is_causal,
            layer_idx=original.layer_idx,
            config=original.config,
        )
        adopt(new, original, ["k_proj", "v_proj", "q_proj", "out_proj"])
        return new.train(original.training)

    def forward(self, hidden_states, key_value_states=None, cache=None, attention_mask=None, **kwargs):
        if key_value_states is not None:
            key_value_states, bias = split_size_bias(key_value_states, self.embed_dim)
            if bias is not None:
                bias = bias.to(hidden_states.dtype)[:, None, None, :]
                attention_mask = bias if attention_mask is None else attention_mask + bias
        return super().forward(hidden_states, key_value_states, cache=cache, attention_mask=attention_mask, **kwargs)


def whisper_encoder(model: nn.Module) -> nn.Module:
    return model.get_encoder() if hasattr(model, "get_encoder") else model.model.encoder


def whisper_decoder(model: nn.Module) -> nn.Module:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model.decoder


class WhisperAdapter(Adapter):
    family = "whisper"
    description = (
        "Hugging Face Whisper (WhisperForConditionalGeneration, WhisperModel): encoder reduced, decoder reads sizes"
    )
    modality = "audio"

    def matches(self, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) == "whisper" and hasattr(model, "get_encoder")

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        encoder = whisper_encoder(model)
        for name, module in model.named_modules():
            if module is encoder.layers:
                return name, module
        raise ValueError(f"no encoder layers found in {type(model).__name__}")

    def prepare_model(self, model: nn.Module) -> None:
        encoder = whisper_encoder(model)
        if not isinstance(encoder.layer_norm, SizeCarryingLayerNorm):
            encoder.layer_norm = SizeCarryingLayerNorm.adopt(encoder.layer_norm)
        for layer in whisper_decoder(model).layers:
            if not isinstance(layer.encoder_attn, SizedCrossAttention):
                layer.encoder_attn = SizedCrossAttention.adopt(layer.encoder_attn)

    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock:
        return WhisperTokenBlock(block, model.config.d_model, index, num_blocks)

    def protected_tokens(self, model: nn.Module) -> int:
        return 0  # no CLS token: every position is audio

    def default_input(
        self, model: nn.Module, image_size: int | None = None, sequence_length: int | None = None
    ) -> InputSpec:
        return InputSpec("audio", sequence_length=sequence_length or int(model.config.max_source_positions))

    def check_input(self, model: nn.Module, spec: InputSpec) -> None:
        window = int(model.config.max_source_positions)
        if spec.modality != "audio" or spec.sequence_length != window:
            raise RecipeError(
                f"a Whisper encoder always takes its {window}-token window (30 s); got {spec.modality} "
                f"input of {spec.sequence_length or spec.image_size}",
                hint="drop sequence_length / image_size from the recipe",
            )

    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry:
        """The encoder's MACs: the two convolutions and the layers (the decoder's cost depends on the text)."""
        config = model.config
        d, tokens = config.d_model, spec.sequence_length
        frames = 2 * tokens
        conv1 = frames * d * config.num_mel_bins * 3
        conv2 = tokens * d * d * 3
        return Geometry(
            num_layers=config.encoder_layers,
            hidden_size=d,
            mlp_macs_per_token=2 * d * config.encoder_ffn_dim,
            input_tokens=tokens,
            embed_macs=conv1 + conv2,
            head_macs=0,
        )
