"""ubnas_tf.io_utils: the one atomic writer every file of a run directory goes through."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from ubnas_tf.io_utils import (
    DiskFullError,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    disk_full_path,
    disk_full_reason,
    read_json,
)


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


def test_full_disk_raises_one_error_naming_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "arch_history.json"
    atomic_write_json(path, {"epochs": [1]})
    for code, reason in ((errno.ENOSPC, "no space left on device"),
                         (errno.EDQUOT, "disk quota exceeded")):
        with pytest.raises(DiskFullError) as caught, atomic_output(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"epochs": [1, ')
            raise OSError(code, os.strerror(code))
        assert str(caught.value) == f"{reason} while writing {path}"
        assert caught.value.errno == code and caught.value.path == str(path)
        assert disk_full_reason(caught.value) == reason and disk_full_path(caught.value) == str(path)
        assert read_json(path) == {"epochs": [1]}  # the old file, whole
        assert sorted(os.listdir(tmp_path)) == ["arch_history.json"]
    # Other errors pass through unchanged.
    with pytest.raises(PermissionError), atomic_output(path):
        raise PermissionError(errno.EACCES, "denied")
    # TensorFlow reports a full disk in its message only (ResourceExhaustedError).
    tf_error = RuntimeError("{{function_node __wrapped__SaveV2}} run/checkpoints/ckpt-3_temp/"
                            "part-00000-of-00001.data-00000-of-00001.tempstate1; No space left "
                            "on device [Op:SaveV2]")
    assert disk_full_reason(tf_error) == "no space left on device"
    assert disk_full_path(tf_error).startswith("run/checkpoints/ckpt-3_temp/part-")
    assert disk_full_reason(ValueError("bad value")) is None
