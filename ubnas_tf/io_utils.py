"""Crash-safe file writing: everything in a run directory goes through here."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ubnas_tf.errors import DiskFullError

__all__ = ["DiskFullError", "atomic_output", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "disk_full_path", "disk_full_reason", "read_json"]

# errno values that mean "the file system has no room for this write".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How they read in messages that carry no errno (TensorFlow's C++ file system errors).
_DISK_FULL_TEXT = re.compile(r"(\S*?)[;:,]?\s+(No space left on device|Disk quota exceeded)")


def disk_full_reason(err: BaseException) -> str | None:
    """"no space left on device" or "disk quota exceeded" if `err` (or an error it was raised
    from) says the disk is full, else None. Knows `OSError` errnos and TensorFlow's messages
    (a checkpoint or summary write fails with a ``ResourceExhaustedError`` whose message ends
    in "No space left on device")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return err.reason
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return _lower_first(os.strerror(err.errno))
        match = _DISK_FULL_TEXT.search(str(err))
        if match:
            return _lower_first(match[2])
        err = err.__cause__
    return None


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def disk_full_path(err: BaseException) -> str | None:
    """The file a disk-full `err` names, if it names one."""
    if isinstance(err, DiskFullError):
        return err.path
    if isinstance(err, OSError) and err.filename:
        return os.fspath(err.filename)
    match = _DISK_FULL_TEXT.search(str(err))
    return match[1] if match and "/" in match[1] else None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside `path` (same extension) for the caller to write; on
    success fsyncs it and renames it over `path`, otherwise removes it.

    A reader (or a resumed run after SIGKILL) sees either the old file or the new one, never
    a partial write. The file gets the mode a plain `open` would give (0666 less the umask),
    not the temporary file's private 0600.

    A write that fails because the disk or the quota is full raises `DiskFullError` naming
    `path` (not the temporary name), after removing the temporary file.
    """
    path = os.fspath(path)
    tmp = None
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        stem, ext = os.path.splitext(os.path.basename(path))
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=ext, dir=directory)
        os.close(fd)
        yield tmp
        if os.path.isfile(tmp):  # a writer may produce a directory (a SavedModel)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as err:
        reason = disk_full_reason(err)
        if reason is None or isinstance(err, DiskFullError):
            raise
        code = err.errno if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS else errno.ENOSPC
        raise DiskFullError(path, reason, code) from err
    finally:
        if tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process umask. Read from /proc where Linux has it: setting it to 0 and back (the
    portable way) would, for that instant, give files that other threads (TensorFlow's
    checkpoint and summary writers) create the modes 0666/0777."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through `atomic_output`."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
