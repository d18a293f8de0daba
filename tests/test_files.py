"""Atomic writes (emodiff/files.py): a file appears whole or not at all."""

from __future__ import annotations

import numpy as np
import pytest

from emodiff.files import atomic_path, copy_atomic, save_npy_atomic, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".md"  # writers that go by the suffix still work
        tmp.write_text("new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_the_writers_round_trip(tmp_path):
    save_npy_atomic(tmp_path / "a.npy", np.arange(3))
    write_json_atomic(tmp_path / "b.json", {"k": [1, 2]})
    copy_atomic(tmp_path / "b.json", tmp_path / "c.json")
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    assert (tmp_path / "c.json").read_text() == (tmp_path / "b.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.json", "c.json"]
