"""Image views shared by the in-memory and the streamed ImageNet inputs."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["center_crop"]


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Evaluation view of a variable-size uint8 image: the shorter side resized (antialiased)
    to ``size * 8 // 7`` (256 for 224), then the central ``size`` x ``size``; uint8 out."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size * 8 // 7) / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
