"""tf.data pipelines that stream a tensorflow-datasets split from disk, for data that does not
fit in memory (ImageNet); any tfds dataset can use them (``--input_pipeline=stream``).

Nothing is materialised: a split (or a slice of one, ``train[a:b]``, which tfds reads without
touching the rest) is read with its files shuffled, shuffled again through a bounded buffer of
still-encoded examples, decoded and augmented per example, batched and prefetched. Peak memory
is the buffer plus a few batches, whatever the size of the split.

Reproducible and resumable at epoch granularity, like the in-memory pipelines
(`ubnas_tf.data.pipelines`): the data are cut into *passes* (one read of the whole slice);
pass ``p`` shuffles its files and its buffer with seeds derived from (seed, p) only, and each
example's or batch's augmentation seed is keyed by (p, its position in the pass). A run resumed
at epoch ``e`` builds the passes from ``e`` on and sees what an uninterrupted run would. A
stream shorter than the epoch (the search's smaller held-out slice) cycles through passes of
its own, positioned by the global batch number. Skipping batches within a pass (a mid-epoch
resume) skips still-encoded records, so it costs reads, not decodes.

Augmentation follows `DatasetInfo.augmentation`: ``"inception"`` (ImageNet) is a random-resized
crop (8 % to 100 % of the area, aspect 3/4 to 4/3) to the model size plus a flip for training,
and a resize of the shorter side to 8/7 of the size plus a centre crop for evaluation;
``"pad_crop"`` batches the decoded images and applies the same vectorised crop, flip and cutout
as the in-memory pipelines.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from ubnas_tf.data.datasets import DatasetInfo, import_tfds, tfds_split_name
from ubnas_tf.data.pipelines import (
    AUTOTUNE,
    check_batch_size,
    pad_fill,
    random_crop_flip,
    random_cutout,
    standardize,
)
from ubnas_tf.data.views import center_crop

# Encoded examples held by the shuffle buffer (with file shuffling on top, as tfds advises).
# Bounded, so memory does not grow with the split: ImageNet JPEGs average ~110 kB.
SHUFFLE_BUFFER = 2048
_KEY = 1_000_003  # (pass, position) -> one int64 seed component, as in pipelines.py


@dataclasses.dataclass(frozen=True)
class StreamSource:
    """One slice of a tfds split: ``examples`` in ``name``'s split ``spec`` (e.g. ``train[:1000]``)."""

    name: str
    spec: str
    data_dir: str | None
    examples: int


def stream_source(name: str, split: str, data_dir: str | None = None, start: int = 0,
                  stop: int | None = None) -> StreamSource:
    """The slice ``[start:stop]`` of our `split` ("train"/"test") of `name`, and its size.

    The size comes from the prepared dataset's metadata; `tfds.testing.mock_data` has none
    (and ignores slices), so then the records are counted without decoding, and a slice
    reads as many of them as it asks for.
    """
    spec = tfds_split_name(name, split)
    if start or stop is not None:
        spec = f"{spec}[{start or ''}:{'' if stop is None else stop}]"
    builder = import_tfds().builder(name, data_dir=data_dir)
    if builder.info.splits:
        examples = builder.info.splits[spec].num_examples
    else:
        examples = int(_read(StreamSource(name, spec, data_dir, 0), None).reduce(
            np.int64(0), lambda n, _: n + 1))
        if stop is not None:  # mocks return the whole split for a slice: keep its size at least
            examples = min(examples, stop - start)
    return StreamSource(name, spec, data_dir, int(examples))


def _read(source: StreamSource, shuffle_seed: int | None) -> tf.data.Dataset:
    """(encoded image, label) records of `source`; files shuffled with `shuffle_seed` (None:
    stored order)."""
    tfds = import_tfds()
    builder = tfds.builder(source.name, data_dir=source.data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = builder.as_dataset(split=source.spec, shuffle_files=shuffle_seed is not None,
                            decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=read_config, as_supervised=True)
    # A prepared split holds exactly `examples`; the cap keeps passes exact under mocks too.
    return ds.take(source.examples) if source.examples else ds


def decode(encoded: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
    """Encoded image bytes (PNG or JPEG) -> uint8 [H, W, C] with `info`'s channel count."""
    channels = info.image_shape[-1]
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    return tf.ensure_shape(image, [None, None, channels])


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    r"""Inception-style training view: a random window covering 8 % to 100 % of the image
    with aspect ratio in [3/4, 4/3] (the whole image if ten tries fail), resized to
    `size` x `size`, then flipped with probability 1/2. Float32 in [0, 255]; `seed`: [2]."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.slice(image, begin, extent)
    window = tf.image.resize(window, [size, size])
    return tf.image.stateless_random_flip_left_right(window, seeds[1])


def _pass_seeds(seed: int, pass_index: int) -> tuple[int, int]:
    """(file shuffle, buffer shuffle) seeds of one pass, from (seed, pass) only."""
    a, b = np.random.SeedSequence([int(seed), int(pass_index)]).generate_state(2, np.uint32)
    return int(a), int(b)


def _one_pass(source: StreamSource, info: DatasetInfo, pass_index: int, batch_size: int,
              seed: int, aug_seed: int, augment: bool, cutout: int, skip_batches: int):
    """The full batches of pass `pass_index`, from batch `skip_batches` on."""
    file_seed, buffer_seed = _pass_seeds(seed, pass_index)
    ds = _read(source, file_seed).shuffle(SHUFFLE_BUFFER, seed=buffer_seed,
                                          reshuffle_each_iteration=False)
    ds = ds.enumerate().skip(skip_batches * batch_size)  # before decoding: skips cost reads only
    key = tf.constant(pass_index * _KEY, tf.int64)
    aug = tf.constant(aug_seed, tf.int64)
    size = info.image_shape[0]

    if info.augmentation == "inception":
        def per_example(i, record):
            image = decode(record[0], info)
            if augment:
                image = random_resized_crop(image, tf.stack([key + i, aug]), size)
            else:
                image = tf.cast(center_crop(image, size), tf.float32)
            return standardize(image, info), tf.cast(record[1], tf.int32)

        ds = ds.map(per_example, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
        if cutout:
            ds = ds.enumerate(skip_batches).map(
                lambda b, xy: (random_cutout(xy[0], tf.stack([key + b, aug]), cutout), xy[1]),
                num_parallel_calls=AUTOTUNE)
        return ds

    fill = pad_fill(info)
    pad = size // 8

    def per_example(i, record):
        image = tf.ensure_shape(decode(record[0], info), info.image_shape)
        return image, tf.cast(record[1], tf.int32)

    def per_batch(b, xy):
        images = standardize(tf.cast(xy[0], tf.float32), info)
        seeds = tf.random.experimental.stateless_split(tf.stack([key + b, aug]), 2)
        if augment:
            images = random_crop_flip(images, seeds[0], pad, fill)
        if cutout:
            images = random_cutout(images, seeds[1], cutout)
        return images, xy[1]

    ds = ds.map(per_example, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=True)
    return ds.enumerate(skip_batches).map(per_batch, num_parallel_calls=AUTOTUNE)


def streamed_batches(source: StreamSource, info: DatasetInfo, batch_size: int, seed: int,
                     start_batch: int, num_batches: int, augment: bool = True,
                     cutout: int = 0) -> tf.data.Dataset:
    """Batches ``start_batch .. start_batch + num_batches - 1`` of the endless sequence of
    passes over `source` (each ``source.examples // batch_size`` batches, reshuffled per pass).

    The passes are concatenated (tfds takes its file-shuffle seed as a Python value, so each
    pass is its own pipeline): ask for the batches the run will consume.
    """
    per_pass = source.examples // batch_size
    check_batch_size(batch_size, source.examples, f"{source.name} {source.spec}")
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    s_shuffle, s_aug = np.random.SeedSequence(int(seed)).generate_state(2, np.uint32)
    first, skip = divmod(start_batch, per_pass)
    last = (start_batch + num_batches - 1) // per_pass
    passes = [_one_pass(source, info, p, batch_size, int(s_shuffle), int(s_aug), augment, cutout,
                        skip if p == first else 0) for p in range(first, last + 1)]
    ds = functools.reduce(tf.data.Dataset.concatenate, passes)
    return ds.take(num_batches)


def streamed_search_dataset(train: StreamSource, heldout: StreamSource, info: DatasetInfo,
                            batch_size: int, seed: int, epochs: int, augment: bool = False,
                            start_epoch: int = 0, start_step: int = 0) -> tf.data.Dataset:
    """((x_t, y_t), (x_v, y_v)) pairs for the bilevel search, streamed: an epoch is one pass
    over `train`; `heldout` may be smaller and then cycles (PC-DARTS' ImageNet proxy search).
    Yields the remaining batches of epochs ``start_epoch`` (from `start_step`) to `epochs`."""
    steps = train.examples // batch_size
    start = start_epoch * steps + start_step
    remaining = epochs * steps - start
    s_train, s_heldout = np.random.SeedSequence(int(seed)).generate_state(2, np.uint32)
    return tf.data.Dataset.zip((
        streamed_batches(train, info, batch_size, int(s_train), start, remaining, augment),
        streamed_batches(heldout, info, batch_size, int(s_heldout), start, remaining, augment),
    )).prefetch(AUTOTUNE)


def streamed_train_dataset(source: StreamSource, info: DatasetInfo, batch_size: int, seed: int,
                           epochs: int, augment: bool = True, cutout: int = 0,
                           start_epoch: int = 0, start_step: int = 0) -> tf.data.Dataset:
    """(images, labels) training batches, streamed: epochs ``start_epoch`` to `epochs`, one
    pass each (``source.examples // batch_size`` steps), from `start_step` of the first."""
    steps = source.examples // batch_size
    start = start_epoch * steps + start_step
    return streamed_batches(source, info, batch_size, seed, start, epochs * steps - start,
                            augment, cutout).prefetch(AUTOTUNE)


def streamed_eval_dataset(source: StreamSource, info: DatasetInfo,
                          batch_size: int) -> tf.data.Dataset:
    """(images, labels) batches in stored order, evaluation preprocessing, last batch kept."""
    size = info.image_shape[0]

    def prepare(encoded, label):
        image = decode(encoded, info)
        if info.augmentation == "inception":
            image = center_crop(image, size)
        image = tf.ensure_shape(image, info.image_shape)
        return standardize(tf.cast(image, tf.float32), info), tf.cast(label, tf.int32)

    ds = _read(source, None).map(prepare, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
