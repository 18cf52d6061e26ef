"""Reader for the IDX format of (Fashion-)MNIST, gzip-compressed or not, in plain numpy.

IDX layout (big-endian): two zero bytes, one type-code byte, one byte giving the number of
dimensions `d`, then `d` uint32 sizes, then the data in C order. The standard files use
type 0x08 (uint8), so images carry the magic number 0x00000803 = 2051 and labels
0x00000801 = 2049. Every failure raises `IdxError` naming the file, so a user sees *which*
file is broken rather than a bare numpy/gzip error.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import BinaryIO

import numpy as np

from ubnas_tf.errors import IdxError

IMAGES_MAGIC = 2051  # uint8, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # uint8, 1 dimension (count)

_GZIP_SIGNATURE = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: str) -> BinaryIO:
    """Opens `path`, transparently decompressing gzip (detected by content, not by name)."""
    with open(path, "rb") as f:
        signature = f.read(2)
    if signature == _GZIP_SIGNATURE:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_exactly(f: BinaryIO, n: int, path: str, what: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # corrupt gzip stream
        raise IdxError(f"{path}: cannot read {what}: {e}") from e
    if len(data) != n:
        raise IdxError(f"{path}: file is truncated: expected {n} bytes of {what}, got {len(data)}")
    return data


def _read_header(f: BinaryIO, path: str) -> tuple[int, np.dtype, tuple[int, ...]]:
    magic_bytes = _read_exactly(f, 4, path, "the IDX magic number")
    (magic,) = struct.unpack(">I", magic_bytes)
    zero, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxError(
            f"{path}: not an IDX file (magic number {magic:#010x}; expected e.g. "
            f"{IMAGES_MAGIC} for images or {LABELS_MAGIC} for labels)"
        )
    shape = struct.unpack(f">{ndim}I", _read_exactly(f, 4 * ndim, path, "the IDX dimensions"))
    return magic, _IDX_DTYPES[type_code], tuple(int(s) for s in shape)


def read_idx_header(path: str | os.PathLike) -> tuple[int, tuple[int, ...]]:
    """Returns (magic number, shape) of an IDX file after reading only its header (cheap)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IdxError(f"{path}: file not found")
    with _open(path) as f:
        magic, _, shape = _read_header(f, path)
    return magic, shape


def read_idx(
    path: str | os.PathLike,
    expected_magic: int | None = None,
    max_items: int | None = None,
) -> np.ndarray:
    """Reads an IDX file (gzip or raw) into a native-endian numpy array.

    Args:
      path: the file.
      expected_magic: if given, the file's magic number must equal it (2051 images, 2049 labels).
      max_items: if given, reads only the first `max_items` entries along axis 0; only those
        bytes are decompressed, which keeps small test loads fast.

    Raises:
      IdxError: missing file, wrong magic number, or fewer data bytes than the header declares
        (or trailing bytes after the data when the whole file is read).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IdxError(f"{path}: file not found")
    with _open(path) as f:
        magic, dtype, shape = _read_header(f, path)
        if expected_magic is not None and magic != expected_magic:
            raise IdxError(
                f"{path}: wrong IDX magic number {magic} (expected {expected_magic}; "
                f"{IMAGES_MAGIC} = images, {LABELS_MAGIC} = labels)"
            )
        if max_items is not None:
            shape = (min(shape[0], max(int(max_items), 0)),) + shape[1:]
        count = int(np.prod(shape, dtype=np.int64))
        data = _read_exactly(f, count * dtype.itemsize, path, "IDX data")
        if max_items is None and _read_exactly_or_empty(f, path):
            raise IdxError(f"{path}: unexpected trailing bytes after {shape} IDX data")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_exactly_or_empty(f: BinaryIO, path: str) -> bool:
    """True if at least one byte follows (a shape/content mismatch)."""
    try:
        return len(f.read(1)) > 0
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise IdxError(f"{path}: cannot read IDX data: {e}") from e


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = True) -> None:
    """Writes a uint8 array as an IDX file (gzip if `compress`). Used by tests and tools."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx supports uint8 arrays only, got {array.dtype}")
    header = struct.pack(">I", (0x08 << 8) | array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + np.ascontiguousarray(array).tobytes()
    opener = gzip.open if compress else open
    with opener(os.fspath(path), "wb") as f:
        f.write(payload)
