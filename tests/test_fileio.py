"""Outputs appear whole or not at all, and are never overwritten without force."""

import pytest

from tokcomp.errors import TokcompError
from tokcomp.fileio import atomic_directory


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force_and_replaced_with_it(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("keep me")
    with pytest.raises(TokcompError, match="--force"):
        with atomic_directory(target):
            pass
    assert (target / "old").read_text() == "keep me"
    with atomic_directory(target, force=True) as tmp:
        (tmp / "new").write_text("fresh")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
