"""tokcomp: model surgery and compilation for token reduction.

    tokcomp.compile("recipe.yaml", "out/")            # recipe -> compressed checkpoint
    tokcomp.apply(model, [{"type": "tome", "r": 8}])  # in-memory surgery
    tokcomp.load("out/")                              # rebuild from the checkpoint alone
    with tokcomp.reducible_span(model, (start, end)): model.generate(...)  # decoders: mark the span per call
"""

__version__ = "0.1.0"

__all__ = ["__version__", "apply", "compile", "load", "reducible_span"]


def __getattr__(name: str):
    # Lazy: `import tokcomp` (and the CLI's start-up) should not import torch until it is needed.
    if name in ("apply", "compile", "load"):
        from tokcomp import api

        return getattr(api, name)
    if name == "reducible_span":
        from tokcomp.surgery.adapters.decoder import reducible_span

        return reducible_span
    raise AttributeError(f"module 'tokcomp' has no attribute {name!r}")
