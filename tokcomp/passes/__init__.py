"""Recipe passes. Importing this package registers every built-in pass."""

from tokcomp.passes import tome  # noqa: F401  (registers the pass)
from tokcomp.passes.base import PASSES, Pass, PassConfig, PassRecord, get_pass, register_pass

__all__ = ["PASSES", "Pass", "PassConfig", "PassRecord", "get_pass", "register_pass"]
