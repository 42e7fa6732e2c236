"""Atomic writes: a file appears whole or not at all, even when the disk is full."""

import errno
import os

import pytest

from edgekeras import io
from edgekeras.io import DiskFullError, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp") or ".tmp" in name]


def test_writes_replace_whole_files(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert _leftovers(path.parent) == []


def test_disk_full_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    atomic_write_bytes(path, b"previous")

    def no_space(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    message = r"No space left to write .*model\.tflite.*previous file, if any, is intact.*run the same command again"
    with pytest.raises(DiskFullError, match=message) as caught:
        atomic_write_bytes(path, b"new and longer content")
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert path.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_disk_full_inside_atomic_path_leaves_previous_file(tmp_path):
    path = tmp_path / "float.h5"
    path.write_bytes(b"previous")
    with pytest.raises(DiskFullError, match=r"float\.h5"):
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"half a mod")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="conversion failed"):
        with atomic_path(tmp_path / "x.tflite"):
            raise ValueError("conversion failed")
    assert os.listdir(tmp_path) == []


def test_atomic_path_requires_a_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing was written"):
        with atomic_path(tmp_path / "x.tflite"):
            pass


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with atomic_path(target, directory=True) as temporary:
        os.makedirs(temporary)
        with open(os.path.join(temporary, "new.pb"), "w") as handle:
            handle.write("new")
    assert os.listdir(target) == ["new.pb"]
    assert sorted(os.listdir(tmp_path)) == ["saved"]
