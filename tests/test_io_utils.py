"""ubnas_tf.io_utils: the one atomic writer every file of a run directory goes through."""

from __future__ import annotations

import os
import stat

import pytest

from ubnas_tf.io_utils import atomic_output, atomic_write_bytes, atomic_write_json, read_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"abc")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "plain.bin") == 0o644  # not mkstemp's 0600


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"epoch": 1})
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        assert tmp.endswith(".json") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "w") as f:
            f.write('{"epoch": ')
        raise RuntimeError("disk full")
    assert read_json(path) == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_atomic_output_replaces_and_creates_directories(tmp_path):
    path = tmp_path / "plots" / "alpha.png"
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"png")
        assert not path.exists()  # not visible until the writer is done
    assert path.read_bytes() == b"png"
    assert os.listdir(tmp_path / "plots") == ["alpha.png"]
