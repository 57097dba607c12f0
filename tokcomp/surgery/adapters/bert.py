"""BERT-family text encoders (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA): post-norm blocks.

Blocks live in `<model>.encoder.layer`: attention.self{query,key,value}, attention.output
{dense, LayerNorm}, intermediate.dense, output{dense, LayerNorm}. Padding comes in as the
attention mask; it is carried as the token mask so padding is never merged into real tokens.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokcomp.surgery.adapters.base import Adapter, Geometry, InputSpec
from tokcomp.surgery.adapters.common import adopt, linear_macs_outside, separate_qkv_attention
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.block import TokenBlock

BERT_FAMILY_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


class BertTokenBlock(TokenBlock):
    def __init__(self, original: nn.Module, hidden_size: int, index: int, num_blocks: int, protected: int):
        super().__init__(hidden_size, index, num_blocks, padded=True, protected=protected)
        adopt(self, original, ["attention", "intermediate", "output"])

    def attention_residual(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, AttentionInfo]:
        # Post-norm: three linear layers read x first. A channel slice of the packed state (surgery/state.py)
        # would make each copy it (matmul's path for strided inputs: copy, mm, add); one copy serves all three.
        x = x.contiguous()
        attn = self.attention.self
        out, info = separate_qkv_attention(
            x,
            attn.query,
            attn.key,
            attn.value,
            attn.attention_head_size,
            attn.scaling,
            bias,
            attn.dropout.p if self.training else 0.0,
        )
        return self.attention.output(out, x), info  # dense, dropout, LayerNorm(out + x)

    def mlp_residual(self, x: Tensor) -> Tensor:
        return self.output(self.intermediate(x), x)  # dense, dropout, LayerNorm(out + x)


class BertAdapter(Adapter):
    family = "bert"
    description = "BERT-family encoders (" + ", ".join(BERT_FAMILY_TYPES) + "), padding-aware"
    modality = "text"

    def matches(self, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) not in BERT_FAMILY_TYPES:
            return False
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            return False  # causal / cross-attending BERTs cannot drop tokens
        return True

    def block_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        for name, module in model.named_modules():
            if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
                return name, module
        raise ValueError(f"no encoder.layer blocks found in {type(model).__name__}")

    def rewrite_block(self, block: nn.Module, index: int, num_blocks: int, model: nn.Module) -> TokenBlock:
        return BertTokenBlock(block, model.config.hidden_size, index, num_blocks, self.protected_tokens(model))

    def geometry(self, model: nn.Module, spec: InputSpec) -> Geometry:
        config = model.config
        blocks_name, blocks = self.block_list(model)
        embeddings = blocks_name.replace("encoder.layer", "embeddings")
        return Geometry(
            num_layers=len(blocks),
            hidden_size=config.hidden_size,
            mlp_macs_per_token=2 * config.hidden_size * config.intermediate_size,
            input_tokens=spec.sequence_length,
            embed_macs=0,  # embeddings are table lookups
            head_macs=linear_macs_outside(model, (blocks_name, embeddings)),
        )
