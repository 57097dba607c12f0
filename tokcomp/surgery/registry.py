"""Which adapter handles a model, and the block rewrite itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from tokcomp.errors import UnsupportedModelError
from tokcomp.surgery.adapters.base import Adapter
from tokcomp.surgery.adapters.bert import BertAdapter
from tokcomp.surgery.adapters.decoder import DecoderAdapter
from tokcomp.surgery.adapters.hf_vision import DeiTAdapter, Dinov2Adapter, ViTAdapter
from tokcomp.surgery.adapters.timm_vit import TimmViTAdapter
from tokcomp.surgery.adapters.whisper import WhisperAdapter
from tokcomp.surgery.block import TokenBlock
from tokcomp.surgery.state import TokenState

ADAPTERS: list[Adapter] = [
    ViTAdapter(),
    DeiTAdapter(),
    Dinov2Adapter(),
    BertAdapter(),
    TimmViTAdapter(),
    WhisperAdapter(),
    DecoderAdapter(),
]


def supported_families() -> str:
    return "; ".join(f"{a.family}: {a.description}" for a in ADAPTERS)


def find_adapter(model: nn.Module) -> Adapter:
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    what = type(model).__name__ + (f" (model_type '{model_type}')" if model_type else "")
    raise UnsupportedModelError(
        f"token reduction does not support {what}",
        hint=f"supported families: {supported_families()}",
    )


def adapter_by_family(family: str) -> Adapter:
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise UnsupportedModelError(
        f"unknown adapter family '{family}'", hint=f"known: {', '.join(a.family for a in ADAPTERS)}"
    )


def rewrite_blocks(model: nn.Module, adapter: Adapter) -> list[TokenBlock]:
    """Swap every transformer block for its TokenBlock (idempotent); returns the new blocks."""
    _, blocks = adapter.block_list(model)
    adapter.prepare_model(model)
    count = len(blocks)
    for index in range(count):
        original = blocks[index]
        if not isinstance(original, TokenBlock):
            blocks[index] = adapter.rewrite_block(original, index, count, model).train(original.training)
    return list(blocks)


def token_blocks(model: nn.Module) -> list[TokenBlock]:
    """The rewritten blocks of a model, in order (empty if it was never rewritten)."""
    return [m for m in model.modules() if isinstance(m, TokenBlock)]


@contextlib.contextmanager
def capture_final_state(model: nn.Module, trace_source: bool = False) -> Iterator[list[TokenState]]:
    """Record the token state leaving the last block (sizes, mask, optional source map).

    Yields a list that holds one TokenState per forward pass run inside the block.
    Used by size-weighted pooling and by merge-map visualisation; not needed to run.
    """
    blocks = token_blocks(model)
    if not blocks:
        raise ValueError("model has no tokcomp blocks; apply a token-reduction pass first")
    states: list[TokenState] = []
    last = blocks[-1]
    hook = last.register_forward_hook(lambda *_: states.append(last.captured_state))
    for block in blocks:
        block.trace_source = trace_source
    last.capture_state = True
    try:
        yield states
    finally:
        hook.remove()
        last.capture_state = False
        last.captured_state = None
        for block in blocks:
            block.trace_source = False
