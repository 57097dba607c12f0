"""The plugin manifest shipped beside a TensorRT engine, and registration before loading.

Deserialising an engine that uses plugins fails with "IPluginCreator not found"
unless the plugin definitions were registered first. tokcomp writes
`<engine>.plugins.json` naming every plugin the network uses; `register_plugins`
imports tokcomp's plugin module and checks that each one is now in TensorRT's
registry, so a missing plugin is an error before deserialisation, not a crash in it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError
from tokcomp.fileio import read_json, write_json
from tokcomp.plugins_cuda import NAMESPACE, PLUGIN_VERSION

FORMAT = "tokcomp-tensorrt-plugins"
FORMAT_VERSION = 1
# Only tokcomp's own module is ever imported from a manifest (never a name read from a file).
PLUGIN_MODULE = "tokcomp.plugins_cuda.tensorrt_plugins"


def build_manifest(op_types: list[str], aot: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "module": PLUGIN_MODULE,
        "plugins": [
            {"name": op, "namespace": NAMESPACE, "version": PLUGIN_VERSION, "aot": aot} for op in sorted(set(op_types))
        ],
        **(extra or {}),
    }


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    write_json(path, manifest)


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TokcompError(f"plugin manifest {path} is missing", hint="re-run `tokcomp export --format tensorrt`")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise TokcompError(f"{path} is not a tokcomp plugin manifest this version reads (format {FORMAT} v{FORMAT_VERSION})")
    if manifest.get("module") != PLUGIN_MODULE:
        raise TokcompError(f"{path} names plugin module {manifest.get('module')!r}; tokcomp only loads {PLUGIN_MODULE}")
    return manifest


def register_plugins(manifest: dict[str, Any]) -> list[str]:
    """Import tokcomp's TensorRT plugins and check every plugin the manifest lists is registered."""
    import tensorrt as trt

    importlib.import_module(PLUGIN_MODULE)
    registry = trt.get_plugin_registry()
    missing = [
        f"{p['namespace']}::{p['name']}"
        for p in manifest["plugins"]
        if registry.get_creator(p["name"], p["version"], p["namespace"]) is None
    ]
    if missing:
        raise TokcompError(
            f"TensorRT plugins {missing} are not registered after importing {PLUGIN_MODULE}",
            hint="use the tokcomp version that built the engine, with tensorrt >= 10.7",
        )
    return [f"{p['namespace']}::{p['name']}" for p in manifest["plugins"]]
