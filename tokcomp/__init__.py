"""tokcomp: model surgery and compilation for token reduction.

    tokcomp.compile("recipe.yaml", "out/")        # recipe -> compressed checkpoint
    tokcomp.apply(model, [{"type": "tome", "r": 8}])  # in-memory surgery
    tokcomp.load("out/")                           # rebuild from the checkpoint alone
"""

__version__ = "0.1.0"

from tokcomp.api import apply, compile, load  # noqa: E402

__all__ = ["__version__", "apply", "compile", "load"]
