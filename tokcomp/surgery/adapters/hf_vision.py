"""Hugging Face vision transformers: ViT, DeiT (distillation token) and DINOv2 (LayerScale).

transformers 5.x layout: ViT/DeiT blocks live in `<model>.layers` (ViTLayer: layernorm_before,
attention{q,k,v,o}_proj, layernorm_after, mlp{fc1,fc2}, dropout); DINOv2 blocks in
`<model>.encoder.layer` (norm1, attention, layer_scale1, drop_path, norm2, mlp, layer_scale2).
"""

from __future__ import annotations

from torch import Tensor, nn

from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.adapters.common import adopt, linear_macs_outside, separate_qkv_attention
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.block import TokenBlock


def _hf_attention(attention: nn.Module, x: Tensor, bias: Tensor | None, training: bool) -> tuple[Tensor, AttentionInfo]:
    out, info = separate_qkv_attention(
        x,
        attention.q_proj,
        attention.k_proj,
        attention.v_proj,
        attention.head_dim,
        attention.scaling,
        bias,
        attention.attention_dropout if training else 0.0,
    )
    return attention.o_proj(out), info


class ViTTokenBlock(TokenBlock):
    """ViTLayer / DeiTLayer: pre-norm, no LayerScale."""

    def __init__(self, original: nn.Module, hidden_size: int, index: int, num_blocks: int, protected: int):
        super().__init__(hidden_size, index, num_blocks, padded=False, protected=protected)
        adopt(self, original, ["attention", "layernorm_before", "layernorm_after", "mlp", "dropout"])

    def attention_residual(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, AttentionInfo]:
        out, info = _hf_attention(self.attention, self.layernorm_before(x), bias, self.training)
        return x + self.dropout(out), info

    def mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.mlp(self.layernorm_after(x)))


class Dinov2TokenBlock(TokenBlock):
    """Dinov2Layer: pre-norm with LayerScale and (training-only) drop path."""

    def __init__(self, original: nn.Module, hidden_size: int, index: int, num_blocks: int, protected: int):
        super().__init__(hidden_size, index, num_blocks, padded=False, protected=protected)
        adopt(self, original, ["norm1", "attention", "layer_scale1", "drop_path", "norm2", "mlp", "layer_scale2"])

    def attention_residual(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, AttentionInfo]:
        out, info = _hf_attention(self.attention, self.norm1(x), bias, self.training)
        return x + self.drop_path(self.layer_scale1(out)), info

    def mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))


class _HFVisionAdapter(Adapter):
    modality = "image"
    model_type: str = ""
    block_class_name: str = ""
    token_block: type[TokenBlock] = ViTTokenBlock

    def matches(self, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) == self.model_type

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) and (
                type(module[0]).__name__ in (self.block_class_name, self.token_block.__name__)
            ):
                return name, module
        raise ValueError(f"no {self.block_class_name} blocks found in {type(model).__name__}")

    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock:
        return self.token_block(block, model.config.hidden_size, index, num_blocks, self.protected_tokens(model))

    def prefix_tokens(self, model: nn.Module) -> int:
        return 1

    def mlp_macs_per_token(self, model: nn.Module) -> int:
        config = model.config
        return 2 * config.hidden_size * config.intermediate_size

    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry:
        config = model.config
        blocks_name, blocks = self.block_list(model)
        patches = (spec.image_size // config.patch_size) ** 2
        embeddings = next(name for name, _ in model.named_modules() if name.endswith("embeddings"))
        return Geometry(
            num_layers=len(blocks),
            hidden_size=config.hidden_size,
            mlp_macs_per_token=self.mlp_macs_per_token(model),
            input_tokens=patches + self.prefix_tokens(model),
            # DiffRate's convention counts the patch embedding for P + 1 tokens.
            embed_macs=(patches + 1) * config.hidden_size * config.patch_size**2 * config.num_channels,
            head_macs=linear_macs_outside(model, (blocks_name, embeddings)),
        )


class ViTAdapter(_HFVisionAdapter):
    family = "vit"
    description = "Hugging Face ViT (ViTModel, ViTForImageClassification)"
    model_type = "vit"
    block_class_name = "ViTLayer"

    def fixed_image_size(self, model: nn.Module) -> int | None:
        # interpolate_pos_encoding is off unless a caller passes it to every forward.
        return int(model.config.image_size)


class DeiTAdapter(ViTAdapter):
    family = "deit"
    description = "Hugging Face DeiT, with the distillation token protected"
    model_type = "deit"
    block_class_name = "DeiTLayer"

    def prefix_tokens(self, model: nn.Module) -> int:
        return 2

    def protected_tokens(self, model: nn.Module) -> int:
        # CLS and the distillation token both feed classifier heads.
        return 2


class Dinov2Adapter(_HFVisionAdapter):
    family = "dinov2"
    description = "Hugging Face DINOv2 (Dinov2Model, Dinov2ForImageClassification), LayerScale"
    model_type = "dinov2"
    block_class_name = "Dinov2Layer"
    token_block = Dinov2TokenBlock

    def mlp_macs_per_token(self, model: nn.Module) -> int:
        config = model.config
        hidden = int(config.hidden_size * config.mlp_ratio)
        if config.use_swiglu_ffn:
            swiglu = (int(hidden * 2 / 3) + 7) // 8 * 8
            return 3 * config.hidden_size * swiglu
        return 2 * config.hidden_size * hidden
