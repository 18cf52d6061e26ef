"""Choosing a tf.distribute strategy from a flag value."""

from __future__ import annotations

import tensorflow as tf


def split_cpu(n: int) -> None:
    """Splits the (first) CPU into `n` logical devices (must run before TF initialises)."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``none`` -> default strategy; ``mirrored`` -> all local GPUs (or logical CPUs);
    ``multi_worker`` -> MultiWorkerMirroredStrategy from TF_CONFIG; ``tpu`` -> TPUStrategy."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; use none, mirrored, multi_worker or tpu.")
