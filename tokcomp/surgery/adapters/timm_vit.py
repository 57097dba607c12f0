"""timm VisionTransformer (timm >= 0.9): LayerScale, q/k norm, fused attention honoured.

Only imported models are inspected; timm itself is an optional extra (`tokcomp[timm]`),
since it hard-requires torchvision. Blocks live in `model.blocks` (nn.Sequential of
timm `Block`: norm1, attn{qkv, q_norm, k_norm, norm, proj, proj_drop}, ls1, drop_path1,
norm2, mlp, ls2, drop_path2). Fused vs. manual attention is the same math; tokcomp always
runs the fused kernel with the size bias, which is what `fused_attn=True` does.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.adapters.common import adopt
from tokcomp.surgery.attention import AttentionInfo, attend
from tokcomp.surgery.block import TokenBlock

_BLOCK_PARTS = ["norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"]


class TimmTokenBlock(TokenBlock):
    def __init__(self, original: nn.Module, hidden_size: int, index: int, num_blocks: int, protected: int):
        super().__init__(hidden_size, index, num_blocks, padded=False, protected=protected)
        adopt(self, original, _BLOCK_PARTS)

    def attention_residual(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, AttentionInfo]:
        attn = self.attn
        batch, tokens, _ = x.shape
        qkv = attn.qkv(self.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        dropout = attn.attn_drop.p if self.training else 0.0
        out, info = attend(q, k, v, bias, attn.scale, dropout)
        out = getattr(attn, "norm", nn.Identity())(out)
        out = attn.proj_drop(attn.proj(out))
        return x + self.drop_path1(self.ls1(out)), info

    def mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TimmViTAdapter(Adapter):
    family = "timm-vit"
    description = "timm VisionTransformer (LayerScale, q/k norm, fused attention), with tokcomp[timm]"
    modality = "image"

    def matches(self, model: nn.Module) -> bool:
        cls = type(model)
        return cls.__name__ == "VisionTransformer" and cls.__module__.startswith("timm.")

    def block_list(self, model: nn.Module) -> tuple[str, nn.Sequential]:
        blocks = model.blocks
        for block in blocks:
            if type(block).__name__ not in ("Block", TimmTokenBlock.__name__) or not all(
                hasattr(block, part) for part in _BLOCK_PARTS
            ):
                raise ValueError(
                    f"timm block type {type(block).__name__} is not supported (supported: timm Block with "
                    "pre-norm attention and MLP)"
                )
        return "blocks", blocks

    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock:
        return TimmTokenBlock(block, model.embed_dim, index, num_blocks, self.protected_tokens(model))

    def protected_tokens(self, model: nn.Module) -> int:
        return max(1, int(getattr(model, "num_prefix_tokens", 1)))

    def default_input(
        self, model: nn.Module, image_size: int | None = None, sequence_length: int | None = None
    ) -> InputSpec:
        return InputSpec("image", image_size=image_size or int(model.patch_embed.img_size[0]))

    def patch_size(self, model: nn.Module) -> int:
        return int(model.patch_embed.patch_size[0])

    def fixed_image_size(self, model: nn.Module) -> int | None:
        return None if getattr(model, "dynamic_img_size", False) else int(model.patch_embed.img_size[0])

    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry:
        dim = model.embed_dim
        patch = model.patch_embed.patch_size[0]
        patches = (spec.image_size // patch) ** 2
        first_mlp = model.blocks[0].mlp
        hidden = first_mlp.fc1.out_features
        head = model.head
        return Geometry(
            num_layers=len(model.blocks),
            hidden_size=dim,
            mlp_macs_per_token=2 * dim * hidden,
            input_tokens=patches + int(getattr(model, "num_prefix_tokens", 1)),
            embed_macs=(patches + 1) * dim * patch**2 * 3,
            head_macs=head.in_features * head.out_features if isinstance(head, nn.Linear) else 0,
        )
