"""Tests of ubnas_tf.data: IDX reading, dataset loading and errors, search split, pipelines.

No network: Fashion-MNIST is synthesised as real gzip IDX files in tmp_path, CIFAR-10 goes
through `tfds.testing.mock_data` with sockets blocked. Only the last test reads the real
Fashion-MNIST files, and only if the Debian package put them on this machine.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import struct

import numpy as np
import pytest
import tensorflow as tf
from tool_runs import needs_fashion

from ubnas_tf import data
from ubnas_tf.data import idx
from ubnas_tf.data.pipelines import _epoch_keyed_index_batches

FMNIST = data.get_info("fashion_mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------- helpers


def _write_raw_idx(path, magic: int, shape, payload: bytes, compress: bool = True) -> None:
    """Writes an IDX file by hand (independent of the module's own writer)."""
    blob = struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + payload
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(blob)


def _make_fashion_dir(directory, n_train=30, n_test=12, compress=True, seed=0):
    """Writes the four Fashion-MNIST IDX files with random content; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        img_name, lbl_name = FILES[split]
        _write_raw_idx(directory / (img_name + suffix), 2051, x.shape, x.tobytes(), compress)
        _write_raw_idx(directory / (lbl_name + suffix), 2049, y.shape, y.tobytes(), compress)
        arrays[split] = (x, y)
    return arrays


def _take(ds, k=None):
    """Materialises a dataset of (x, y) batches into lists of numpy arrays."""
    ds = ds if k is None else ds.take(k)
    return [tuple(t.numpy() for t in element) for element in ds]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_images_and_labels(tmp_path, compress):
    x = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    y = np.array([7, 0, 3], dtype=np.uint8)
    _write_raw_idx(tmp_path / "img", 2051, x.shape, x.tobytes(), compress)
    _write_raw_idx(tmp_path / "lbl", 2049, y.shape, y.tobytes(), compress)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "img", expected_magic=2051), x)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "lbl", expected_magic=2049), y)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "img", max_items=2), x[:2])
    assert idx.read_idx_header(tmp_path / "img") == (2051, (3, 4, 5))


def test_write_idx_roundtrip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 6, 6), dtype=np.uint8)
    idx.write_idx(tmp_path / "a.gz", x)
    assert idx.read_idx_header(tmp_path / "a.gz") == (2051, (4, 6, 6))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.gz"), x)


def test_read_idx_errors_name_the_file(tmp_path):
    bad_magic = tmp_path / "bad_magic.gz"
    _write_raw_idx(bad_magic, 0x12345678, (1,), b"\x00")
    with pytest.raises(idx.IdxError, match="bad_magic.gz"):
        idx.read_idx(bad_magic)

    labels = tmp_path / "labels.gz"
    _write_raw_idx(labels, 2049, (3,), b"\x01\x02\x03")
    with pytest.raises(idx.IdxError, match=r"labels\.gz.*wrong IDX magic number 2049"):
        idx.read_idx(labels, expected_magic=2051)

    truncated = tmp_path / "truncated.gz"
    _write_raw_idx(truncated, 2051, (10, 28, 28), b"\x00" * 100)
    with pytest.raises(idx.IdxError, match="truncated.gz.*truncated"):
        idx.read_idx(truncated)

    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(idx.IdxError, match="garbage.gz"):
        idx.read_idx(garbage)

    with pytest.raises(idx.IdxError, match="missing.gz.*not found"):
        idx.read_idx(tmp_path / "missing.gz")


# ----------------------------------------------------------------------------- registry


def test_registry_and_unknown_name():
    for name in ("fashion_mnist", "cifar10", "cifar100"):
        info = data.get_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.image_shape[-1]
    assert data.DATASETS["cifar100"].num_classes == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        FMNIST.num_classes = 3  # type: ignore[misc]
    for call in (
        lambda: data.get_info("mnistt"),
        lambda: data.check_available("mnistt", None),
        lambda: data.load_arrays("mnistt", "train"),
    ):
        with pytest.raises(ValueError, match=r"mnistt.*cifar10.*cifar100.*fashion_mnist"):
            call()


# ----------------------------------------------------------------------------- Fashion-MNIST IDX


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, compress):
    arrays = _make_fashion_dir(tmp_path, compress=compress)
    data.check_available("fashion_mnist", str(tmp_path))
    for split in ("train", "test"):
        x, y = data.load_arrays("fashion_mnist", split, data_dir=str(tmp_path))
        assert x.dtype == np.uint8 and x.shape == (len(arrays[split][0]), 28, 28, 1)
        assert y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0], arrays[split][0])
        np.testing.assert_array_equal(y, arrays[split][1])
    x5, y5 = data.load_arrays("fashion_mnist", "train", data_dir=str(tmp_path), max_examples=5)
    np.testing.assert_array_equal(x5[..., 0], arrays["train"][0][:5])  # the FIRST five
    np.testing.assert_array_equal(y5, arrays["train"][1][:5])


def test_fashion_mnist_corrupt_or_missing_file(tmp_path):
    _make_fashion_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"

    # Labels file holding images: wrong magic number, caught by the cheap check.
    _write_raw_idx(labels, 2051, (30, 28, 28), bytes(30 * 28 * 28))
    with pytest.raises(data.DatasetError, match="train-labels-idx1-ubyte.gz") as err:
        data.check_available("fashion_mnist", str(tmp_path))
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    assert "--data_dir" in str(err.value)

    # Truncated data: headers are fine, the full read fails and names the file.
    _write_raw_idx(labels, 2049, (30,), bytes(10))
    with pytest.raises(data.DatasetError, match="train-labels-idx1-ubyte.gz.*truncated"):
        data.load_arrays("fashion_mnist", "train", data_dir=str(tmp_path))

    # Image and label counts disagree.
    _write_raw_idx(labels, 2049, (29,), bytes(29))
    with pytest.raises(data.DatasetError, match="30 images.*29 labels"):
        data.check_available("fashion_mnist", str(tmp_path))

    # One file missing: the error names it instead of falling back to tfds.
    labels.unlink()
    with pytest.raises(data.DatasetError, match="missing file .*train-labels-idx1-ubyte.gz"):
        data.load_arrays("fashion_mnist", "train", data_dir=str(tmp_path))
    # The test split is still complete and loads.
    x, _ = data.load_arrays("fashion_mnist", "test", data_dir=str(tmp_path))
    assert x.shape == (12, 28, 28, 1)


@pytest.mark.parametrize("dataset, how", [
    ("fashion_mnist", ("apt-get install -y dataset-fashion-mnist", "train-images-idx3-ubyte")),
    ("cifar10", ("download_and_prepare", "--data_dir")),
])
@pytest.mark.parametrize("call", ["check_available", "load_arrays"])
def test_a_missing_dataset_says_how_to_get_it(tmp_path, no_network, dataset, how, call):
    with pytest.raises(data.DatasetError) as err:
        if call == "check_available":
            data.check_available(dataset, str(tmp_path))
        else:
            data.load_arrays(dataset, "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and all(text in message for text in how), message
    assert os.listdir(tmp_path) == []  # nothing was downloaded or prepared


def test_bad_split_and_max_examples(tmp_path):
    _make_fashion_dir(tmp_path)
    with pytest.raises(ValueError, match="split"):
        data.load_arrays("fashion_mnist", "validation", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="max_examples"):
        data.load_arrays("fashion_mnist", "train", data_dir=str(tmp_path), max_examples=0)


# ----------------------------------------------------------------------------- tfds (CIFAR)


def _tfds_testing():
    # tensorflow_datasets.testing imports `dill`, which tensorflow-datasets does not require.
    pytest.importorskip("dill", reason="tfds.testing.mock_data needs the `dill` package")
    import tensorflow_datasets as tfds  # deferred: after the skip above; 0.5 s, CIFAR tests only

    return tfds


def test_cifar10_through_mocked_tfds(tmp_path, no_network):
    tfds = _tfds_testing()
    with tfds.testing.mock_data(num_examples=12):
        data.check_available("cifar10", str(tmp_path))
        x, y = data.load_arrays("cifar10", "train", data_dir=str(tmp_path))
        assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (12,) and y.dtype == np.int32
        assert 0 <= y.min() and y.max() < 10
        x, y = data.load_arrays("cifar10", "test", data_dir=str(tmp_path), max_examples=5)
        assert x.shape == (5, 32, 32, 3) and y.shape == (5,)


# ----------------------------------------------------------------------------- search split


def test_split_search_halves():
    n = 101  # odd: one example is dropped
    x = np.arange(n, dtype=np.int64)[:, None, None, None] * np.ones((1, 2, 2, 1), np.int64)
    y = np.arange(n, dtype=np.int32)
    (xa, ya), (xb, yb) = data.split_search(x, y, seed=0)
    assert len(ya) == len(yb) == n // 2
    assert set(ya).isdisjoint(yb)
    assert len(set(ya) | set(yb)) == n - 1 and set(ya) | set(yb) <= set(range(n))
    np.testing.assert_array_equal(xa[:, 0, 0, 0], ya)  # images stay with their labels
    np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)

    (_, ya2), (_, yb2) = data.split_search(x, y, seed=0)
    np.testing.assert_array_equal(ya, ya2)
    np.testing.assert_array_equal(yb, yb2)
    (_, ya3), _ = data.split_search(x, y, seed=1)
    assert not np.array_equal(ya, ya3)

    with pytest.raises(ValueError, match="length"):
        data.split_search(x, y[:-1], seed=0)


# ----------------------------------------------------------------------------- pipelines


def _images(n, seed=0, value=None):
    if value is not None:
        return np.full((n, 28, 28, 1), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def test_normalize_values():
    info = dataclasses.replace(FMNIST, mean=(0.5,), std=(0.25,))
    out = data.normalize(np.array([[[[0]], [[255]]]], np.uint8), info)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().ravel(), [-2.0, 2.0], rtol=1e-6)
    rgb = data.normalize(np.full((1, 1, 1, 3), 51, np.uint8), data.get_info("cifar10"))
    expected = (0.2 - np.array(data.get_info("cifar10").mean)) / data.get_info("cifar10").std
    np.testing.assert_allclose(rgb.numpy().ravel(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        data.normalize(np.zeros((1, 28, 28, 1), np.float32), FMNIST)
    with pytest.raises(ValueError, match="channels"):
        data.normalize(np.zeros((1, 28, 28, 3), np.uint8), FMNIST)


def test_search_dataset_structure_and_errors():
    x_t, x_v = _images(40, 1), _images(40, 2)
    y_t = np.arange(40, dtype=np.int32) % 5  # training half: labels 0..4
    y_v = np.arange(40, dtype=np.int32) % 5 + 5  # held-out half: labels 5..9
    ds = data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, batch_size=16, seed=0)
    spec = ds.element_spec
    assert spec[0][0].shape == (16, 28, 28, 1) and spec[0][0].dtype == tf.float32
    assert spec[0][1].shape == (16,) and spec[0][1].dtype == tf.int32
    assert spec[1][0].shape == (16, 28, 28, 1) and spec[1][1].dtype == tf.int32
    elements = list(ds.take(40 // 16))  # endless; an epoch is 40 // 16 full batches
    for (xt, yt), (xv, yv) in elements:
        assert yt.numpy().max() < 5 <= yv.numpy().min()  # halves are not mixed
        assert xt.dtype == tf.float32 and xv.shape == (16, 28, 28, 1)

    # Reproducible with the same seed (epoch by epoch), reshuffled across epochs.
    def epochs(dataset, n=2):
        pairs = [(e[0][1].numpy(), e[1][1].numpy()) for e in dataset.take(n * (40 // 16))]
        return [pairs[k * 2:(k + 1) * 2] for k in range(n)]

    first = epochs(data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, 16, seed=3))
    again = epochs(data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, 16, seed=3))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], first[1])
    other = epochs(data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, 16, seed=4), 1)
    assert not np.array_equal(first[0], other[0])

    aug = data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, 16, 0, augment=True)
    assert aug.element_spec == ds.element_spec

    with pytest.raises(ValueError, match="batch_size"):
        data.search_dataset(x_t, y_t, x_v[:10], y_v[:10], FMNIST, batch_size=16, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, batch_size=41, seed=0)


def test_train_dataset_reproducible_and_augmented():
    x = _images(48, 3)
    y = np.arange(48, dtype=np.int32) % 10

    def run(seed, **kwargs):
        return _take(data.train_dataset(x, y, FMNIST, 16, seed=seed, **kwargs), 3)

    a, b = run(7, cutout=6), run(7, cutout=6)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = run(8, cutout=6)
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c, strict=True))

    # Same seed => same order; augmentation must change some images, keep labels.
    plain, augmented = run(7, augment=False), run(7, augment=True)
    for (xp, yp), (xa, ya) in zip(plain, augmented, strict=True):
        np.testing.assert_array_equal(yp, ya)
        assert xa.shape == xp.shape == (16, 28, 28, 1) and xa.dtype == np.float32
    changed = np.mean(
        [
            not np.array_equal(p, q)
            for bp, ba in zip(plain, augmented, strict=True)
            for p, q in zip(bp[0], ba[0], strict=True)
        ]
    )
    assert changed > 0.5

    # Each epoch differs (reshuffle + new augmentations); resuming at epoch 1 continues it.
    two_epochs = _take(data.train_dataset(x, y, FMNIST, 16, seed=7), 6)
    assert not np.array_equal(two_epochs[0][1], two_epochs[3][1])
    resumed = _take(data.train_dataset(x, y, FMNIST, 16, seed=7, start_epoch=1), 3)
    for (xa, ya), (xb, yb) in zip(two_epochs[3:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)

    with pytest.raises(ValueError, match="batch_size"):
        data.train_dataset(x, y, FMNIST, 49, seed=0)


def test_datasets_resumed_mid_epoch_continue_the_same_batches():
    """A run resumed from a mid-epoch checkpoint starts `start_step` batches into its epoch
    and sees exactly the batches (order and augmentation) of an uninterrupted run, into the
    following epochs."""
    x, y = _images(48, 3), np.arange(48, dtype=np.int32) % 10
    whole = _take(data.train_dataset(x, y, FMNIST, 16, seed=7, cutout=6), 9)  # 3 epochs of 3
    resumed = _take(data.train_dataset(x, y, FMNIST, 16, seed=7, cutout=6, start_epoch=1,
                                       start_step=2), 4)
    for (xa, ya), (xb, yb) in zip(whole[5:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)

    x_t, x_v = _images(40, 1), _images(40, 2)
    y_t, y_v = np.arange(40, dtype=np.int32) % 5, np.arange(40, dtype=np.int32) % 5 + 5

    def pairs(ds, n):
        return [(e[0][0].numpy(), e[0][1].numpy(), e[1][0].numpy(), e[1][1].numpy())
                for e in ds.take(n)]

    search_whole = pairs(data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, 16, 3, augment=True), 6)
    search_resumed = pairs(data.search_dataset(x_t, y_t, x_v, y_v, FMNIST, 16, 3, augment=True,
                                               start_epoch=1, start_step=1), 3)
    for a, b in zip(search_whole[3:], search_resumed, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)

    for bad in (-1, 3):  # 48 // 16 = 3 batches per epoch
        with pytest.raises(ValueError, match=r"start_step must be in \[0, 3\)"):
            data.train_dataset(x, y, FMNIST, 16, seed=7, start_step=bad)


@pytest.mark.parametrize("n, batch_size", [(40, 16), (48, 16), (7, 7)])
def test_epoch_keyed_index_batches(n, batch_size):
    steps = n // batch_size

    def epochs(seed, start, count):
        items = [(i.numpy(), s.numpy()) for i, s in
                 _epoch_keyed_index_batches(n, batch_size, seed, start).take(count * steps)]
        return [items[k * steps:(k + 1) * steps] for k in range(count)]

    stream = epochs(5, 0, 3)
    for epoch in stream:
        indices = np.concatenate([i for i, _ in epoch])
        assert all(i.shape == (batch_size,) for i, _ in epoch)  # full batches only
        assert len(set(indices)) == steps * batch_size  # no index twice in an epoch
        assert indices.min() >= 0 and indices.max() < n
    seeds = [tuple(s) for epoch in stream for _, s in epoch]
    assert len(set(seeds)) == len(seeds)  # every batch its own augmentation seed
    if n > batch_size:
        first = [np.concatenate([i for i, _ in e]) for e in stream]
        assert not np.array_equal(first[0], first[1])  # reshuffled each epoch
    # The order is a function of (seed, epoch): a resumed stream continues the same one.
    resumed = epochs(5, 2, 1)[0]
    for (ia, sa), (ib, sb) in zip(stream[2], resumed, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(sa, sb)
    other = epochs(6, 0, 1)[0]
    if n > batch_size:
        assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(stream[0], other, strict=True))


def test_random_crop_flip_is_a_shifted_or_mirrored_window():
    x = tf.constant(np.random.default_rng(0).normal(size=(6, 8, 8, 2)), tf.float32)
    pad = 2
    fill = tf.constant([-1.0, -3.0])
    out = data.random_crop_flip(x, tf.constant([1, 2], tf.int64), pad, fill).numpy()
    padded = np.stack([np.full((12, 12), -1.0), np.full((12, 12), -3.0)], axis=-1)
    for img, res in zip(x.numpy(), out, strict=True):
        canvas = padded.copy()
        canvas[pad:-pad, pad:-pad] = img
        windows = [
            canvas[i : i + 8, j : j + 8] for i in range(2 * pad + 1) for j in range(2 * pad + 1)
        ]
        windows += [w[:, ::-1] for w in windows]
        assert any(np.allclose(res, w) for w in windows)


def test_cutout_zeroes_a_square():
    size = 8
    x = _images(64, value=255)  # normalised to a positive constant, never 0
    y = np.zeros(64, np.int32)
    ((batch, _),) = _take(data.train_dataset(x, y, FMNIST, 64, seed=0, augment=False, cutout=size), 1)
    value = (1.0 - FMNIST.mean[0]) / FMNIST.std[0]
    full_squares = 0
    for img in batch[..., 0]:
        zero = img == 0
        rows, cols = np.nonzero(zero)
        assert rows.size > 0
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert zero[r0:r1, c0:c1].all() and zero.sum() == (r1 - r0) * (c1 - c0)  # a rectangle
        assert size // 2 <= r1 - r0 <= size and size // 2 <= c1 - c0 <= size
        np.testing.assert_allclose(img[~zero], value, rtol=1e-5)  # the rest untouched
        full_squares += (r1 - r0, c1 - c0) == (size, size)
    assert full_squares > 0


def test_eval_dataset_keeps_order_and_remainder():
    x = _images(21, 4)
    y = np.arange(21, dtype=np.int32)
    batches = _take(data.eval_dataset(x, y, FMNIST, batch_size=8))
    assert [len(b[1]) for b in batches] == [8, 8, 5]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_allclose(
        np.concatenate([b[0] for b in batches]), data.normalize(x, FMNIST).numpy()
    )


# ----------------------------------------------------------------------------- real data


@needs_fashion
def test_real_fashion_mnist_first_100():
    data.check_available("fashion_mnist", None)
    x, y = data.load_arrays("fashion_mnist", "train", max_examples=100)
    assert x.shape == (100, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (100,) and y.dtype == np.int32
    assert 0 <= y.min() and y.max() <= 9
    assert len(np.unique(y)) > 5
