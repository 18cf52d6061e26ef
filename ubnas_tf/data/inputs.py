"""The inputs of a search or a retraining, in memory or streamed, behind one interface.

`search_inputs` and `train_inputs` decide, from ``input_pipeline`` (``auto``, ``memory`` or
``stream``), whether a dataset is loaded into memory (`datasets.load_arrays` +
`pipelines`: fast for the small datasets) or streamed from tensorflow-datasets (`streams`:
flat memory for ImageNet). ``auto`` streams the datasets marked `DatasetInfo.streamed`.
Either way the runners get the sizes they print and schedule with, and functions that build
the epoch-keyed (resumable) datasets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ubnas_tf.data import pipelines, streams
from ubnas_tf.data.datasets import get_info, load_arrays, split_search

INPUT_PIPELINES = ("auto", "memory", "stream")


def streams_data(dataset: str, input_pipeline: str) -> bool:
    """True if `dataset` is read as a stream under `input_pipeline`."""
    if input_pipeline not in INPUT_PIPELINES:
        raise ValueError(f"input_pipeline must be one of {INPUT_PIPELINES}, got {input_pipeline!r}")
    if input_pipeline == "auto":
        return get_info(dataset).streamed
    return input_pipeline == "stream"


@dataclasses.dataclass
class SearchInputs:
    """The search's two halves: sizes, and ``dataset(start_epoch, start_step)``."""

    train_examples: int
    heldout_examples: int
    steps_per_epoch: int
    dataset: Callable[[int, int], tf.data.Dataset]
    streamed: bool


def search_inputs(dataset: str, data_dir: str | None, max_examples: int | None,
                  heldout_examples: int | None, batch_size: int, seed: int, epochs: int,
                  augment: bool = False, input_pipeline: str = "auto") -> SearchInputs:
    """The search data: the first `max_examples` training images (all if None), split into a
    weight-training half and a held-out half of `heldout_examples` (None: half of them).

    In memory the halves are a seeded random split (`split_search`); streamed they are the
    slices ``[:n - heldout]`` and ``[n - heldout:n]`` of the training split, which tfds reads
    without materialising the rest.
    """
    info = get_info(dataset)
    if not streams_data(dataset, input_pipeline):
        x, y = load_arrays(dataset, "train", data_dir, max_examples)
        (x_t, y_t), (x_v, y_v) = split_search(x, y, seed, heldout_examples)

        def in_memory(start_epoch: int, start_step: int) -> tf.data.Dataset:
            return pipelines.search_dataset(x_t, y_t, x_v, y_v, info, batch_size, seed,
                                            augment=augment, start_epoch=start_epoch,
                                            start_step=start_step)

        return SearchInputs(len(x_t), len(x_v), len(x_t) // batch_size, in_memory, False)

    n = min(max_examples or info.num_train, info.num_train)
    n_heldout = heldout_examples or n // 2
    n_train = n - n_heldout if heldout_examples else n // 2
    train = streams.stream_source(dataset, "train", data_dir, 0, n_train)
    heldout = streams.stream_source(dataset, "train", data_dir, n_train, n_train + n_heldout)

    def streamed(start_epoch: int, start_step: int) -> tf.data.Dataset:
        return streams.streamed_search_dataset(train, heldout, info, batch_size, seed, epochs,
                                               augment=augment, start_epoch=start_epoch,
                                               start_step=start_step)

    return SearchInputs(train.examples, heldout.examples, train.examples // batch_size, streamed,
                        True)


@dataclasses.dataclass
class TrainInputs:
    """Retraining data: sizes, ``train(seed, epochs, augment, cutout, start_epoch,
    start_step)``, and the `validation` (None without) and `test` datasets."""

    train_examples: int
    validation_examples: int
    test_examples: int
    train: Callable[..., tf.data.Dataset]
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    streamed: bool


EVAL_BATCH = 256


def train_inputs(dataset: str, data_dir: str | None, max_examples: int | None,
                 validation_examples: int, batch_size: int, split_seed: int,
                 input_pipeline: str = "auto") -> TrainInputs:
    """The first `max_examples` training images (all if None), of which
    ``min(validation_examples, n // 10)`` are held out for validation, and the test set.

    In memory the validation images are a seeded random choice; streamed they are the first
    ones of the split (the slice ``[:v]``, training on ``[v:n]``).
    """
    info = get_info(dataset)
    if not streams_data(dataset, input_pipeline):
        x, y = load_arrays(dataset, "train", data_dir, max_examples)
        x_test, y_test = load_arrays(dataset, "test", data_dir)
        n_val = min(validation_examples, len(x) // 10) if validation_examples else 0
        perm = np.random.default_rng(split_seed).permutation(len(x))
        x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
        x_tr, y_tr = x[perm[n_val:]], y[perm[n_val:]]

        def in_memory(seed: int, epochs: int, augment: bool, cutout: int, start_epoch: int,
                      start_step: int) -> tf.data.Dataset:
            del epochs  # endless
            return pipelines.train_dataset(x_tr, y_tr, info, batch_size, seed, augment=augment,
                                           cutout=cutout, start_epoch=start_epoch,
                                           start_step=start_step)

        return TrainInputs(
            len(x_tr), n_val, len(x_test), in_memory,
            pipelines.eval_dataset(x_val, y_val, info, EVAL_BATCH) if n_val else None,
            pipelines.eval_dataset(x_test, y_test, info, EVAL_BATCH), False)

    n = min(max_examples or info.num_train, info.num_train)
    n_val = min(validation_examples, n // 10) if validation_examples else 0
    train = streams.stream_source(dataset, "train", data_dir, n_val, n)
    val = streams.stream_source(dataset, "train", data_dir, 0, n_val) if n_val else None
    test = streams.stream_source(dataset, "test", data_dir)

    def streamed(seed: int, epochs: int, augment: bool, cutout: int, start_epoch: int,
                 start_step: int) -> tf.data.Dataset:
        return streams.streamed_train_dataset(train, info, batch_size, seed, epochs,
                                              augment=augment, cutout=cutout,
                                              start_epoch=start_epoch, start_step=start_step)

    return TrainInputs(
        train.examples, val.examples if val else 0, test.examples, streamed,
        streams.streamed_eval_dataset(val, info, EVAL_BATCH) if val else None,
        streams.streamed_eval_dataset(test, info, EVAL_BATCH), True)
