"""Dataset registry and loading into in-memory numpy arrays.

Fashion-MNIST is read from the standard IDX files (Debian's `dataset-fashion-mnist` package
installs them in /usr/share/datasets/fashion-mnist), falling back to a prepared
tensorflow-datasets directory. CIFAR-10/100 and ImageNet come from tensorflow-datasets and are
never downloaded here (`download=False`): this code must run on machines without network, and
a failed download deep inside a run is worse than a clear error before any model is built.

tensorflow_datasets is imported lazily: it is slow to import and the Fashion-MNIST path
does not need it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ubnas_tf.data import idx
from ubnas_tf.data.views import center_crop
from ubnas_tf.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset. `mean`/`std` are per channel, in [0, 1] pixel units.

    `streamed`: too large for in-memory arrays, so read as a tf.data stream from
    tensorflow-datasets by default (`ubnas_tf.data.streams`). `augmentation`: ``"pad_crop"``
    (random crop from an image padded by size // 8, then flip: the CIFAR recipe) or
    ``"inception"`` (random-resized crop + flip for training, resize to 8/7 of the size and
    centre crop for evaluation: the ImageNet recipe).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    streamed: bool = False
    augmentation: str = "pad_crop"


DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Channel statistics of the training sets (the values the DARTS-family code uses).
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        num_train=60000,
        num_test=10000,
        mean=(0.2860,),
        std=(0.3530,),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        num_train=50000,
        num_test=10000,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        image_shape=(32, 32, 3),
        num_classes=100,
        num_train=50000,
        num_test=10000,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    # ImageNet images vary in size: evaluation resizes (shorter side 256) and centre-crops.
    "imagenet2012": DatasetInfo(
        name="imagenet2012",
        image_shape=(224, 224, 3),
        num_classes=1000,
        num_train=1281167,
        num_test=50000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        streamed=True,
        augmentation="inception",
    ),
}

SPLITS = ("train", "test")

# tfds split names for our "train"/"test" (ImageNet has no labelled test split).
_TFDS_SPLITS = {
    "fashion_mnist": {"train": "train", "test": "test"},
    "cifar10": {"train": "train", "test": "test"},
    "cifar100": {"train": "train", "test": "test"},
    "imagenet2012": {"train": "train", "test": "validation"},
}

# Standard IDX base names; each may also end in ".gz".
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def get_info(name: str) -> DatasetInfo:
    """Returns the registry entry for `name`; unknown names raise ValueError listing known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def _how_to_get(name: str, data_dir: str | None) -> str:
    """The remedy part of a DatasetError message."""
    target = data_dir or "DIR"
    if name == "fashion_mnist":
        files = ", ".join(f"{b}.gz" for pair in FASHION_MNIST_FILES.values() for b in pair)
        return (
            "To get it: run `apt-get update && apt-get install -y dataset-fashion-mnist` "
            f"(installs the IDX files in {DEFAULT_FASHION_MNIST_DIR}), or pass "
            f"--data_dir=DIR where DIR contains {files} (uncompressed names also work; from "
            "https://github.com/zalandoresearch/fashion-mnist), or a tensorflow-datasets "
            "data dir in which fashion_mnist is prepared."
        )
    if name == "imagenet2012":
        return (
            "To get it: download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            "image-net.org into MANUAL_DIR, then run `tfds.builder('imagenet2012', "
            f"data_dir='{target}').download_and_prepare(download_config="
            "tfds.download.DownloadConfig(manual_dir='MANUAL_DIR'))` and pass "
            f"--data_dir={target}."
        )
    return (
        "This machine cannot download datasets. On a machine with internet run "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{target}').download_and_prepare()\"`, copy the directory "
        f"{target}/{name} to this machine, and pass --data_dir=<the directory holding {name}/>."
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# --------------------------------------------------------------------------- Fashion-MNIST IDX


def _find_idx_file(directory: str, base: str) -> str | None:
    """Path of `base.gz` or `base` in `directory`, preferring the compressed standard name."""
    for candidate in (base + ".gz", base):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def idx_files_present(directory: str) -> bool:
    """True if any Fashion-MNIST IDX file is in `directory` (then the IDX route is meant)."""
    return os.path.isdir(directory) and any(
        _find_idx_file(directory, base) for pair in FASHION_MNIST_FILES.values() for base in pair
    )


def _idx_paths(directory: str, split: str) -> tuple[str, str]:
    """(images, labels) paths for `split`, or DatasetError naming the missing file."""
    paths = []
    for base in FASHION_MNIST_FILES[split]:
        path = _find_idx_file(directory, base)
        if path is None:
            raise DatasetError(
                f"fashion_mnist: missing file {os.path.join(directory, base + '.gz')} "
                f"(or uncompressed {base}) in {directory}. {_how_to_get('fashion_mnist', None)}"
            )
        paths.append(path)
    return paths[0], paths[1]


def _check_idx_pair(images_path: str, labels_path: str, info: DatasetInfo) -> int:
    """Validates the headers of an images/labels pair; returns the example count."""
    remedy = _how_to_get(info.name, None)
    try:
        img_magic, img_shape = idx.read_idx_header(images_path)
        lbl_magic, lbl_shape = idx.read_idx_header(labels_path)
    except idx.IdxError as e:
        raise DatasetError(f"{info.name}: corrupt IDX file: {e}. {remedy}") from e
    if img_magic != idx.IMAGES_MAGIC or len(img_shape) != 3:
        raise DatasetError(
            f"{info.name}: {images_path} is not an IDX image file (magic {img_magic}, shape "
            f"{img_shape}; expected magic {idx.IMAGES_MAGIC} and 3 dimensions). {remedy}"
        )
    if lbl_magic != idx.LABELS_MAGIC or len(lbl_shape) != 1:
        raise DatasetError(
            f"{info.name}: {labels_path} is not an IDX label file (magic {lbl_magic}, shape "
            f"{lbl_shape}; expected magic {idx.LABELS_MAGIC} and 1 dimension). {remedy}"
        )
    if tuple(img_shape[1:]) != info.image_shape[:2]:
        raise DatasetError(
            f"{info.name}: {images_path} holds {img_shape[1]}x{img_shape[2]} images, expected "
            f"{info.image_shape[0]}x{info.image_shape[1]}. {remedy}"
        )
    if img_shape[0] != lbl_shape[0]:
        raise DatasetError(
            f"{info.name}: {images_path} has {img_shape[0]} images but {labels_path} has "
            f"{lbl_shape[0]} labels. {remedy}"
        )
    return img_shape[0]


def _load_idx(
    directory: str, split: str, info: DatasetInfo, max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = _idx_paths(directory, split)
    _check_idx_pair(images_path, labels_path, info)
    try:
        images = idx.read_idx(images_path, idx.IMAGES_MAGIC, max_items=max_examples)
        labels = idx.read_idx(labels_path, idx.LABELS_MAGIC, max_items=max_examples)
    except idx.IdxError as e:
        raise DatasetError(
            f"{info.name}: corrupt IDX file: {e}. {_how_to_get(info.name, None)}"
        ) from e
    if labels.size and labels.max() >= info.num_classes:
        raise DatasetError(
            f"{info.name}: {labels_path} has label {int(labels.max())}, but the dataset has "
            f"{info.num_classes} classes. {_how_to_get(info.name, None)}"
        )
    return images[..., np.newaxis].astype(np.uint8), labels.astype(np.int32)


# --------------------------------------------------------------------------- tensorflow-datasets


def import_tfds():
    """tensorflow_datasets, imported on first use (slow to import; the IDX path needs none)."""
    import tensorflow_datasets as tfds  # deferred: slow import (0.5 s), unneeded for the IDX path

    return tfds


def _check_tfds(name: str, data_dir: str | None, splits: Sequence[str] = SPLITS) -> None:
    """Raises DatasetError unless tfds can open `splits` of `name` from `data_dir`.

    `as_dataset` only reads metadata (no examples) and fails fast on an unprepared directory;
    unlike a bare file-existence check it also works under `tfds.testing.mock_data`.
    """
    tfds = import_tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        for split in splits:
            builder.as_dataset(split=_TFDS_SPLITS[name][split])
    except Exception as e:  # AssertionError (not prepared), ValueError (unknown split), IO errors
        where = data_dir or "the default tensorflow-datasets data dir (~/tensorflow_datasets)"
        raise DatasetError(
            f"{name}: no prepared tensorflow-datasets copy found in {where} ({e}). "
            f"{_how_to_get(name, data_dir)}"
        ) from e


def _load_tfds(
    name: str, split: str, data_dir: str | None, max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    tfds = import_tfds()
    info = get_info(name)
    tfds_split = _TFDS_SPLITS[name][split]
    if max_examples is not None:
        tfds_split = f"{tfds_split}[:{max_examples}]"  # the first n, in the stored order
    try:
        if name == "imagenet2012":
            images, labels = _load_imagenet(tfds, tfds_split, data_dir, info)
        else:
            ds = tfds.load(
                name,
                split=tfds_split,
                data_dir=data_dir,
                download=False,  # never touch the network
                as_supervised=True,
                shuffle_files=False,  # deterministic order, so max_examples is too
            )
            images, labels = _stack_batches(tfds, ds.batch(_LOAD_CHUNK), info)
    except DatasetError:
        raise
    except Exception as e:
        where = data_dir or "the default tensorflow-datasets data dir (~/tensorflow_datasets)"
        raise DatasetError(
            f"{name}: cannot load split {tfds_split!r} from {where} ({e}). "
            f"{_how_to_get(name, data_dir)}"
        ) from e
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels).astype(np.int32)
    if images.ndim == 3:  # greyscale stored without a channel axis
        images = images[..., np.newaxis]
    if max_examples is not None:  # tfds mocks may ignore slicing; cap here as well
        images, labels = images[:max_examples], labels[:max_examples]
    return images, labels


# Examples per chunk when materialising a tfds split. Not `batch_size=-1`: that sizes one
# batch from the split metadata, which `tfds.testing.mock_data` leaves empty, and TensorFlow
# then aborts the process (std::length_error) instead of raising.
_LOAD_CHUNK = 8192


def _stack_batches(tfds, ds, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates (image, label) batches of a tf.data pipeline into two numpy arrays."""
    images, labels = [], []
    for x, y in tfds.as_numpy(ds):
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, *info.image_shape), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


def _load_imagenet(tfds, tfds_split: str, data_dir: str | None, info: DatasetInfo):
    """Loads an ImageNet slice as the evaluation pipeline sees it (`views.center_crop`)."""
    ds = tfds.load(
        "imagenet2012",
        split=tfds_split,
        data_dir=data_dir,
        download=False,
        as_supervised=True,
        shuffle_files=False,
    )
    size = info.image_shape[0]
    ds = ds.map(lambda image, label: (center_crop(image, size), label),
                num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    return _stack_batches(tfds, ds, info)


# --------------------------------------------------------------------------- public entry points


def check_available(name: str, data_dir: str | None) -> None:
    """Cheaply checks that `name` can be loaded from `data_dir`; raises DatasetError if not.

    Meant to run before any model is built. Reads only file headers / tfds metadata and never
    touches the network.
    """
    info = get_info(name)
    if name == "fashion_mnist":
        directory = data_dir or DEFAULT_FASHION_MNIST_DIR
        if idx_files_present(directory):
            for split in SPLITS:
                _check_idx_pair(*_idx_paths(directory, split), info)
            return
        try:
            _check_tfds(name, data_dir)
        except DatasetError as e:
            raise DatasetError(
                f"fashion_mnist: no IDX files ({', '.join(FASHION_MNIST_FILES['train'])}, ...) "
                f"in {directory}, and no prepared tensorflow-datasets copy either. "
                f"{_how_to_get(name, data_dir)}"
            ) from e
        return
    _check_tfds(name, data_dir)


def load_arrays(
    name: str, split: str, data_dir: str | None = None, max_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a split as (images uint8 NHWC, labels int32) numpy arrays.

    Args:
      name: a key of DATASETS.
      split: "train" or "test" (ImageNet's "test" is its validation set).
      data_dir: fashion_mnist: a directory with the IDX files (default
        DEFAULT_FASHION_MNIST_DIR) or a tfds data dir; others: the tfds data dir (None = tfds
        default).
      max_examples: keep only the first `max_examples` examples (deterministic). Required for
        imagenet2012, which does not fit in memory as arrays (`ubnas_tf.data.streams` reads
        it as a stream instead).

    Raises:
      DatasetError: the data is missing or corrupt (the message says how to get it).
      ValueError: unknown name or split, or a bad max_examples.
    """
    info = get_info(name)
    _check_split(split)
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    if name == "imagenet2012" and max_examples is None:
        raise ValueError(
            "imagenet2012 is too large to load as in-memory arrays (~190 GB at 224x224); "
            "pass max_examples"
        )
    if name == "fashion_mnist":
        directory = data_dir or DEFAULT_FASHION_MNIST_DIR
        if idx_files_present(directory):
            return _load_idx(directory, split, info, max_examples)
        try:
            return _load_tfds(name, split, data_dir, max_examples)
        except DatasetError as e:
            raise DatasetError(
                f"fashion_mnist: no IDX files ({', '.join(FASHION_MNIST_FILES[split])}, with or "
                f"without .gz) in {directory}, and no prepared tensorflow-datasets copy either. "
                f"{_how_to_get(name, data_dir)}"
            ) from e
    return _load_tfds(name, split, data_dir, max_examples)


def split_search(
    x: np.ndarray, y: np.ndarray, seed: int, heldout: int | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Splits a training set into the search's training half and held-out half.

    A seeded permutation (np.random.default_rng(seed)) picks the halves, so a seed reproduces
    the split exactly. By default both halves have len(x) // 2 examples (one is dropped if
    odd); `heldout` sets the held-out part's size instead (the rest trains the weights), as
    in PC-DARTS' ImageNet proxy search, where it is the smaller one.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 examples to split, got {len(x)}")
    if heldout is not None and not 0 < heldout < len(x):
        raise ValueError(f"heldout must be in [1, {len(x) - 1}] for {len(x)} examples, "
                         f"got {heldout}")
    n_train = len(x) // 2 if heldout is None else len(x) - heldout
    n_heldout = len(x) // 2 if heldout is None else heldout
    perm = np.random.default_rng(seed).permutation(len(x))
    a, b = perm[:n_train], perm[n_train : n_train + n_heldout]
    return (x[a], y[a]), (x[b], y[b])


def tfds_split_name(name: str, split: str) -> str:
    """The tfds split behind our "train"/"test" of `name` (ImageNet's test is "validation")."""
    get_info(name)
    _check_split(split)
    return _TFDS_SPLITS[name][split]
