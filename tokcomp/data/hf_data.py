"""Tabular data sets: a Hugging Face `save_to_disk` folder, or parquet files.

Columns are found by type: an image column (datasets.Image, or a struct / binary of
encoded image bytes), else a text column ("text", "sentence", or the only string
column); a label column is a ClassLabel, or an integer column named label / labels.
Rows are decoded only when a sample is used.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError

TEXT_NAMES = ("text", "sentence", "content")
LABEL_NAMES = ("label", "labels")


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def parquet_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.parquet"))


def saved_dataset(path: Path) -> list[Callable]:
    """Loaders for every row of a data set written by `Dataset.save_to_disk`."""
    try:
        import datasets
    except ImportError:
        raise TokcompError(
            f"{path} is a Hugging Face data set; reading it needs the `datasets` package",
            hint="pip install 'tokcomp[data]' (the datasets library)",
        ) from None
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise TokcompError(
            f"{path} holds several splits ({', '.join(splits)}); point at one",
            hint=f"e.g. data: {path / (splits[0] if splits else 'train')}",
        )
    table = datasets.load_from_disk(str(path))
    image, text, label = _columns_from_features(table.features, str(path))

    def loader(index: int) -> Callable:
        def load():
            from tokcomp.data.sources import Sample

            row = table[index]
            value = row[image].convert("RGB") if image else row[text]
            return Sample(value, None if label is None else int(row[label]), f"{path.name}[{index}]")

        return load

    return [loader(i) for i in range(len(table))]


def _columns_from_features(features, where: str) -> tuple[str | None, str | None, str | None]:
    import datasets

    names = list(features)
    images = [n for n in names if isinstance(features[n], datasets.Image)]
    strings = [
        n for n in names if isinstance(features[n], datasets.Value) and features[n].dtype in ("string", "large_string")
    ]
    labels = [n for n in names if isinstance(features[n], datasets.ClassLabel)]
    labels += [
        n for n in names if n in LABEL_NAMES and isinstance(features[n], datasets.Value) and "int" in features[n].dtype
    ]
    return _choose(images, strings, labels, names, where)


def _choose(images: list[str], strings: list[str], labels: list[str], names: list[str], where: str):
    if images:
        return images[0], None, labels[0] if labels else None
    named = [n for n in TEXT_NAMES if n in strings]
    if named or len(strings) == 1:
        return None, (named or strings)[0], labels[0] if labels else None
    raise TokcompError(
        f"{where}: no image column and no single text column among columns {', '.join(names)}",
        hint=f"name the text column one of {', '.join(TEXT_NAMES)} or keep one string column",
    )


def parquet(files: list[Path]) -> list[Callable]:
    """Loaders for every row of one or more parquet files (read with pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TokcompError(
            "reading parquet files needs pyarrow", hint="pip install 'tokcomp[data]' (brings pyarrow)"
        ) from None
    table = pa.concat_tables([pq.read_table(f) for f in files])
    schema = table.schema
    names = schema.names
    images = [f.name for f in schema if _is_image_field(f, pa)]
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    labels = [f.name for f in schema if f.name in LABEL_NAMES and pa.types.is_integer(f.type)]
    where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} parquet files)"
    image, text, label = _choose(images, strings, labels, names, where)

    def loader(index: int) -> Callable:
        def load():
            from tokcomp.data.sources import Sample

            row = table.slice(index, 1).to_pylist()[0]
            value = _decode_image(row[image]) if image else row[text]
            return Sample(value, None if label is None else int(row[label]), f"{files[0].stem}[{index}]")

        return load

    return [loader(i) for i in range(table.num_rows)]


def _is_image_field(field, pa) -> bool:
    # datasets writes images as struct<bytes: binary, path: string>; plain binary columns hold encoded files.
    if pa.types.is_struct(field.type):
        return field.type.get_field_index("bytes") >= 0
    return pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)


def _decode_image(cell: Any):
    from PIL import Image

    data = cell["bytes"] if isinstance(cell, dict) else cell
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
