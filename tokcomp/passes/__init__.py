"""Recipe passes. Importing this package registers every pass module in it.

A new pass is a module here that defines a `Pass` subclass decorated with
`@register_pass`; nothing else needs editing.
"""

import importlib
import pkgutil

from tokcomp.passes.base import PASSES, Pass, PassConfig, PassRecord, get_pass, register_pass

_SUPPORT_MODULES = {"base", "budget", "context", "token_reduction"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SUPPORT_MODULES and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PASSES", "Pass", "PassConfig", "PassRecord", "get_pass", "register_pass"]
