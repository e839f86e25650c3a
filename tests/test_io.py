"""rnas.io: atomic writes and the project's JSON format."""

from __future__ import annotations

import json
import os

import pytest

from rnas.io import atomic_save, atomic_write_bytes, atomic_write_text, read_json, write_json


def test_write_json_format_and_round_trip(tmp_path):
    doc = {"b": [1, 2.5, None], "a": {"x": "é"}, "z": True}
    path = write_json(tmp_path / "sub" / "doc.json", doc)
    assert path.read_text() == json.dumps(doc, indent=1) + "\n"  # indent 1, insertion order, newline
    assert read_json(path) == doc
    assert list(read_json(path)) == ["b", "a", "z"]


def test_atomic_writes_replace_and_leave_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two", fsync=False)
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def half_then_fail(fh):
        fh.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_save(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
