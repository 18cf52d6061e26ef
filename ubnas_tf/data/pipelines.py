"""tf.data input pipelines for the search, retraining and evaluation, with seeded augmentation.

Design, chosen so a 2-core CPU does not starve the training step:

* Images are normalised once to float32 and kept in memory as one tensor per split. The
  pipeline shuffles and batches only *indices* (cheap int64 scalars), then gathers a whole
  batch with one `tf.gather`; there is no per-image work in Python or in tf.data.
* Augmentation (random crop from a padded image, horizontal flip, cutout) is vectorised over
  the batch and runs in a parallel `map` after `batch`.
* Every random decision is a stateless op whose seed comes from a seeded
  `tf.data.Dataset.random(rerandomize_each_iteration=True)` stream: the same `seed` gives the
  same sequence of batches and augmentations, while each epoch still differs from the last.
* `drop_remainder=True` on training pipelines gives a static batch dimension, so a
  `tf.function` train step is traced once.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ubnas_tf.data.datasets import DatasetInfo

AUTOTUNE = tf.data.AUTOTUNE


def normalize(images: np.ndarray | tf.Tensor, info: DatasetInfo) -> tf.Tensor:
    """uint8 NHWC images -> float32 `(x / 255 - mean) / std`, per channel of `info`."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise ValueError(f"normalize expects uint8 images, got {images.dtype.name}")
    channels = len(info.mean)
    if images.shape.rank is not None and images.shape[-1] != channels:
        raise ValueError(
            f"images have {images.shape[-1]} channels, but {info.name} has {channels} "
            f"(image shape {tuple(images.shape)})"
        )
    return standardize(tf.cast(images, tf.float32), info)


def standardize(images: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
    """float32 pixels in [0, 255] -> `(x / 255 - mean) / std`, per channel of `info`."""
    mean = tf.constant(info.mean, tf.float32)
    std = tf.constant(info.std, tf.float32)
    return (images / 255.0 - mean) / std


def _derive_seeds(seed: int, n: int) -> list[int]:
    """`n` independent seeds from one user seed (so the two halves' shuffles are uncorrelated)."""
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)]


def _check_xy(x: np.ndarray, y: np.ndarray, info: DatasetInfo, what: str) -> None:
    if len(x) != len(y):
        raise ValueError(f"{what}: images and labels differ in length: {len(x)} vs {len(y)}")
    if tuple(np.shape(x)[1:]) != tuple(info.image_shape):
        raise ValueError(
            f"{what}: images have shape {tuple(np.shape(x)[1:])}, but {info.name} images are "
            f"{tuple(info.image_shape)}"
        )


def check_batch_size(batch_size: int, n: int, what: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} examples of {what}: with "
            "drop_remainder=True no batch would be produced; lower batch_size"
        )


def pad_fill(info: DatasetInfo) -> tf.Tensor:
    """The normalised value of a black pixel: padding is black *before* normalisation, as in
    torchvision's RandomCrop(padding=...) on the raw image, which the reference results use."""
    return tf.constant([-m / s for m, s in zip(info.mean, info.std, strict=True)], tf.float32)


def random_crop_flip(
    images: tf.Tensor, seed: tf.Tensor, pad: int, fill: tf.Tensor | float = 0.0
) -> tf.Tensor:
    """Per-image random crop after `pad` pixels of padding, then random horizontal flip.

    Vectorised over the batch: two batched gathers select each image's window. `fill` is the
    padding value per channel; `seed` is a stateless seed of shape [2].
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    if pad > 0:
        padded = tf.pad(images - fill, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) + fill
        offsets = tf.random.stateless_uniform(
            [batch, 2], seed=seeds[0], minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        rows = offsets[:, :1] + tf.range(height)[tf.newaxis]  # [B, H]
        cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]  # [B, W]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2 pad, C]
        images = tf.gather(images, cols, axis=2, batch_dims=1)  # [B, H, W, C]
    flip = tf.random.stateless_uniform([batch], seed=seeds[1]) < 0.5
    return tf.where(flip[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(images, [2]), images)


def random_cutout(images: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Zeroes one `size` x `size` square per image (clipped at the border), DARTS-style.

    The centre is uniform over the image, so near a border the zeroed area is a smaller
    rectangle. Applied to normalised images, so zero is the dataset mean.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    cy = tf.random.stateless_uniform([batch, 1], seeds[0], 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([batch, 1], seeds[1], 0, width, dtype=tf.int32)
    y0, x0 = cy - size // 2, cx - size // 2
    rows = tf.range(height)[tf.newaxis]
    cols = tf.range(width)[tf.newaxis]
    in_rows = (rows >= y0) & (rows < y0 + size)  # [B, H]
    in_cols = (cols >= x0) & (cols < x0 + size)  # [B, W]
    mask = in_rows[:, :, tf.newaxis] & in_cols[:, tf.newaxis, :]  # [B, H, W]
    return tf.where(mask[..., tf.newaxis], tf.zeros_like(images), images)


def _epoch_keyed_index_batches(n: int, batch_size: int, shuffle_seed: int, start_epoch: int,
                               start_step: int = 0):
    """An endless stream of (index batch, stateless seed) whose order depends only on
    (`shuffle_seed`, epoch number): a run resumed at `start_epoch` (and `start_step` batches
    into it) sees exactly the batches an uninterrupted run would. Each epoch is a fresh
    permutation of ``range(n)`` cut into ``n // batch_size`` full batches; every batch gets
    its own [2] int64 seed (keyed by epoch and batch, so skipping batches changes no other)."""
    if not 0 <= start_step < n // batch_size:
        raise ValueError(f"start_step must be in [0, {n // batch_size}) (the batches of an "
                         f"epoch), got {start_step}")

    def one_epoch(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(shuffle_seed, tf.int64), epoch])
        )
        batches = tf.data.Dataset.from_tensor_slices(perm).batch(batch_size, drop_remainder=True)
        steps = tf.data.Dataset.range(n // batch_size)
        seeds = steps.map(lambda b: tf.stack([epoch * 1_000_003 + b, tf.constant(shuffle_seed, tf.int64)]))
        return tf.data.Dataset.zip((batches, seeds))

    # Skipped before the images are gathered: skipping costs index batches, not images.
    return tf.data.Dataset.range(start_epoch, 2**40).flat_map(one_epoch).skip(start_step)


def _in_memory(x: np.ndarray, y: np.ndarray, info: DatasetInfo):
    return normalize(x, info), tf.convert_to_tensor(np.asarray(y, dtype=np.int32))


def _shuffled_batches(
    x: np.ndarray,
    y: np.ndarray,
    info: DatasetInfo,
    batch_size: int,
    shuffle_seed: int,
    aug_seed: int,
    augment: bool,
    cutout_size: int,
    start_epoch: int,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Endless (images, labels) training batches, keyed by epoch (see
    `_epoch_keyed_index_batches`), gathered from in-memory normalised tensors; `fit` needs
    ``steps_per_epoch = len(x) // batch_size``."""
    images, labels = _in_memory(x, y, info)
    pad = info.image_shape[0] // 8  # 4 px for 32x32 (the usual), 3 px for 28x28
    fill = pad_fill(info)
    seed_offset = tf.constant([0, aug_seed], tf.int64)

    def gather_augment(i, seed):
        seeds = tf.random.experimental.stateless_split(seed + seed_offset, 2)
        batch = tf.gather(images, i)
        if augment:
            batch = random_crop_flip(batch, seeds[0], pad, fill)
        if cutout_size > 0:
            batch = random_cutout(batch, seeds[1], cutout_size)
        return batch, tf.gather(labels, i)

    keyed = _epoch_keyed_index_batches(len(x), batch_size, shuffle_seed, start_epoch, start_step)
    return keyed.map(gather_augment, num_parallel_calls=AUTOTUNE)


def search_dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    info: DatasetInfo,
    batch_size: int,
    seed: int,
    augment: bool = False,
    cutout: int = 0,
    start_epoch: int = 0,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Pairs for the bilevel search: each element is ((x_t, y_t), (x_v, y_v)).

    x_* are float32 normalised [batch_size, H, W, C] batches, y_* int32 [batch_size]. Both
    halves are shuffled with seeds derived from `seed`, reshuffled every epoch, and zipped so
    one element is one weight-step batch plus one architecture-step batch. An epoch is one
    pass over the training half; a smaller held-out half cycles (PC-DARTS' proxy search). The dataset is
    endless and its order depends only on (`seed`, epoch number), so a run resumed at epoch
    `start_epoch` continues the same sequence (use `steps_per_epoch` = half size //
    batch_size with `fit`); `start_step` > 0 starts that many batches into the epoch (a run
    resumed from a mid-epoch checkpoint). With `augment`, both halves get crop + flip (as
    the DARTS search does); `cutout` > 0 adds cutout.

    Raises:
      ValueError: batch_size larger than a half (no batch would come out), `start_step` not
        within an epoch, or bad shapes.
    """
    _check_xy(x_train, y_train, info, "search training half")
    _check_xy(x_val, y_val, info, "search held-out half")
    check_batch_size(batch_size, len(x_train), "the search training half")
    check_batch_size(batch_size, len(x_val), "the search held-out half")
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0, got {cutout}")
    s_train, s_val, a_train, a_val = _derive_seeds(seed, 4)
    train = _shuffled_batches(x_train, y_train, info, batch_size, s_train, a_train, augment,
                              cutout, start_epoch, start_step)
    # A smaller held-out half cycles through passes of its own, placed by the global step.
    val_pass, val_step = divmod(start_epoch * (len(x_train) // batch_size) + start_step,
                                len(x_val) // batch_size)
    val = _shuffled_batches(x_val, y_val, info, batch_size, s_val, a_val, augment, cutout,
                            val_pass, val_step)
    return tf.data.Dataset.zip((train, val)).prefetch(AUTOTUNE)


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    info: DatasetInfo,
    batch_size: int,
    seed: int,
    augment: bool = True,
    cutout: int = 0,
    start_epoch: int = 0,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Endless (images, labels) batches for retraining, shuffled and augmented reproducibly.

    Augmentation: random crop with image_size // 8 pixels of (black) padding and a random
    horizontal flip; `cutout` > 0 also zeroes a cutout x cutout square of the normalised
    image. The order and augmentations depend only on (`seed`, epoch number): each epoch
    reshuffles, and a run resumed at `start_epoch` continues the same sequence (use
    `steps_per_epoch` = len(x) // batch_size with `fit`), `start_step` batches into it.
    """
    _check_xy(x, y, info, "training set")
    check_batch_size(batch_size, len(x), "the training set")
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0, got {cutout}")
    s_shuffle, s_aug = _derive_seeds(seed, 2)
    ds = _shuffled_batches(x, y, info, batch_size, s_shuffle, s_aug, augment, cutout, start_epoch,
                           start_step)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(
    x: np.ndarray, y: np.ndarray, info: DatasetInfo, batch_size: int
) -> tf.data.Dataset:
    """(images, labels) batches in order, no augmentation, last partial batch kept."""
    _check_xy(x, y, info, "evaluation set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images, labels = _in_memory(x, y, info)
    ds = tf.data.Dataset.range(len(x)).batch(batch_size).map(
        lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
