"""Folders written all at once: the one way model folders, checkpoints and the converter are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from codetune.manifest import atomic_folder


def test_a_written_folder_replaces_the_old_one(tmp_path: Path) -> None:
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "stale.bin").write_text("old")
    with atomic_folder(folder) as tmp:
        assert tmp != folder and tmp.parent == folder.parent and tmp.is_dir()
        (tmp / "model.safetensors").write_text("new")
        assert (folder / "stale.bin").is_file()  # readers still see the old folder while it is written
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_failed_write_leaves_the_old_folder_and_no_partial_one(tmp_path: Path) -> None:
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "model.safetensors").write_text("old")
    (tmp_path / "final.tmp").mkdir()  # a crashed earlier write
    (tmp_path / "final.tmp" / "half").write_text("x")
    with pytest.raises(OSError), atomic_folder(folder) as tmp:
        assert not (tmp / "half").exists()  # the crashed write's leftovers are not reused
        (tmp / "model.safetensors").write_text("half-written")
        raise OSError("disk full")
    assert (folder / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
