"""Datasets (registry, IDX and tfds loading, search splits) and tf.data pipelines."""

from ubnas_tf.data.datasets import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    DatasetError,
    DatasetInfo,
    check_available,
    get_info,
    load_arrays,
    split_search,
)
from ubnas_tf.data.idx import IdxError, read_idx, write_idx
from ubnas_tf.data.pipelines import (
    eval_dataset,
    normalize,
    random_crop_flip,
    random_cutout,
    search_dataset,
    train_dataset,
)

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "DatasetError",
    "DatasetInfo",
    "IdxError",
    "check_available",
    "eval_dataset",
    "get_info",
    "load_arrays",
    "normalize",
    "random_crop_flip",
    "random_cutout",
    "read_idx",
    "search_dataset",
    "split_search",
    "train_dataset",
    "write_idx",
]
