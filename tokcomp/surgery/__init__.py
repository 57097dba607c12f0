"""Model surgery: adapters that rewrite transformer blocks into token-reducing blocks."""

from tokcomp.surgery.block import TokenBlock
from tokcomp.surgery.registry import (
    ADAPTERS,
    adapter_by_family,
    capture_final_state,
    find_adapter,
    rewrite_blocks,
    supported_families,
    token_blocks,
)
from tokcomp.surgery.state import TokenState

__all__ = [
    "ADAPTERS",
    "TokenBlock",
    "TokenState",
    "adapter_by_family",
    "capture_final_state",
    "find_adapter",
    "rewrite_blocks",
    "supported_families",
    "token_blocks",
]
