"""Configuration declared once: options, and the settings the training tools share.

A configuration is a dataclass. Each of its *options* (`option`, `required`) is a field that
carries its default, its help text and the values it accepts; `ubnas_tf.flags` defines the
command-line flag of every option from it (`define_config_flags`) and builds the dataclass
back from the parsed flags in one call (`config_from_flags`), so a default or a help text is
written in one place only. A plain field (no help text) is a setting of the library alone,
without a flag.

`FitConfig` holds what every tool that trains a network sets (the data, batch, epochs,
seed and progress output); `RunConfig` adds what a resumable search or retraining run needs
(its directory, data pipeline, devices and checkpoints). `ubnas_tf.search.runner.SearchConfig`,
`ubnas_tf.nets.training.TrainConfig` and
`ubnas_tf.module_comparison.compare.ComparisonConfig` extend them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from ubnas_tf.graph_optimization import use_lean_graph_optimization

__all__ = ["CHOICES", "DATASET_NAMES", "DISTRIBUTE_CHOICES", "HELP", "INPUT_PIPELINES",
           "LOWER_BOUND", "UPPER_BOUND", "FitConfig", "RunConfig", "option", "required"]

DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012")
# Only strategies that tests run (say in --distribute's help how far); TPUStrategy is not
# offered: nothing here could exercise it.
DISTRIBUTE_CHOICES = ("none", "mirrored", "multi_worker")
INPUT_PIPELINES = ("auto", "memory", "stream")  # `ubnas_tf.data.inputs`

# The metadata keys of an option (what its flag is defined with).
HELP, LOWER_BOUND, UPPER_BOUND, CHOICES = "help", "lower_bound", "upper_bound", "choices"


def _metadata(help_text: str, lower_bound: float | None, upper_bound: float | None,
              choices: Sequence[str] | None) -> dict:
    metadata: dict[str, Any] = {HELP: help_text}
    for key, value in ((LOWER_BOUND, lower_bound), (UPPER_BOUND, upper_bound),
                       (CHOICES, None if choices is None else tuple(choices))):
        if value is not None:
            metadata[key] = value
    return metadata


def option(default: Any, help_text: str, *, lower_bound: float | None = None,
           upper_bound: float | None = None, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field that is also a flag: its default, its help text (``--help``) and,
    checked when the command line is parsed, its bounds or its choices (an enum)."""
    return dataclasses.field(default=default,
                             metadata=_metadata(help_text, lower_bound, upper_bound, choices))


def required(help_text: str, *, choices: Sequence[str] | None = None) -> Any:
    """An option without a default: the config cannot be made without it; its flag
    defaults to None and the tool marks it required. `choices`, if given, are the values
    it accepts (an enum)."""
    return dataclasses.field(metadata=_metadata(help_text, None, None, choices))


@dataclasses.dataclass(kw_only=True)
class FitConfig:
    """What every tool that trains a network sets: the data, batch and epochs, the seed and
    Keras' progress output."""

    dataset: str = option("fashion_mnist", "Dataset name.", choices=DATASET_NAMES)
    data_dir: str | None = option(
        None, "Where the dataset lives: the IDX files for fashion_mnist (default "
              "/usr/share/datasets/fashion-mnist), else a tensorflow-datasets data_dir.")
    max_examples: int | None = option(
        None, "Use only the first N training examples (quick runs); default: all.",
        lower_bound=1)
    batch_size: int = option(64, "Examples per training batch (per step, all replicas).",
                             lower_bound=1)
    epochs: int = option(50, "Maximum number of epochs.", lower_bound=1)
    seed: int = option(0, "Random seed; with the same seed a CPU run repeats exactly when "
                          "TensorFlow runs single-threaded (TF_NUM_INTRAOP_THREADS=1, see "
                          "WORKSPACE.md).", lower_bound=0, upper_bound=2**32 - 1)
    verbose: int = option(1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per "
                             "epoch.")


@dataclasses.dataclass(kw_only=True)
class RunConfig(FitConfig):
    """A resumable search or retraining run: `FitConfig`, its directory, how the data are
    read, the devices, the precision, the steps per call and the checkpoints."""

    # The run directory; its flag (--output_dir) has each tool's own default, so it is
    # defined with the run's other flags (`ubnas_tf.flags.define_run_flags`).
    output_dir: str
    input_pipeline: str = option(
        "auto", "How the data are read: memory (decoded once into RAM; fast for small "
                "datasets), stream (read, decoded and augmented on the fly from "
                "tensorflow-datasets, flat memory; not for the Fashion-MNIST IDX files) or "
                "auto (stream imagenet2012, keep the others in memory).",
        choices=INPUT_PIPELINES)
    distribute: str = option(
        "none", "tf.distribute strategy: none (one device); mirrored (all local GPUs, or the "
                "--logical_cpus CPU devices; tested only for the search's training step on 2 "
                "logical CPUs, not for whole runs of the tools); multi_worker "
                "(MultiWorkerMirroredStrategy over the cluster that the TF_CONFIG environment "
                "variable describes, one process per worker, all with the same flags and an "
                "--output_dir on a shared filesystem, which only the chief writes; tested with "
                "tools/search.py and tools/train.py on two local CPU workers; see the README, "
                "'More than one machine').", choices=DISTRIBUTE_CHOICES)
    mixed_precision: bool = option(
        False, "Compute in float16 with float32 variables (Keras mixed_float16 policy).")
    steps_per_execution: int = option(
        1, "Training steps run per tf.function call (fewer Python round trips).", lower_bound=1)
    checkpoint_every_steps: int = option(
        0, "Also save a checkpoint every N training steps within an epoch, so a run killed in "
           "a long epoch resumes from that step (same batches as an uninterrupted run); 0 "
           "saves at epoch ends only. SIGTERM always saves one at the next step and exits "
           "with status 75. May change when resuming.", lower_bound=0)

    def apply_to_process(self) -> None:
        """What the run's settings ask of TensorFlow before any model is built: the seed,
        deterministic kernels (--seed promises an exact repeat on CPU), on a CPU the lean
        Grappler pipeline (`ubnas_tf.graph_optimization`) and, with `mixed_precision`, Keras'
        mixed_float16 policy."""
        tf.keras.utils.set_random_seed(self.seed)
        tf.config.experimental.enable_op_determinism()
        use_lean_graph_optimization()
        if self.mixed_precision:
            tf.keras.mixed_precision.set_global_policy("mixed_float16")
