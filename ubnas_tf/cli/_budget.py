"""The network a search's budget refers to, read from the command line: the evaluation
network of --target_train_flagfile (a tools/train.py flagfile) and its cost table, which
tools/search.py checks --target_mops against and puts in its `SearchConfig`."""

from __future__ import annotations

import os

from absl import flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.errors import FlagError
from ubnas_tf.nets.eval_network import EvalNetworkConfig
from ubnas_tf.search.budget import CostTable, dataset_cost_table

FLAGS = flags.FLAGS


def read_eval_network(path: str, module_config: str | None = None
                      ) -> tuple[EvalNetworkConfig, str]:
    """The evaluation network a retraining flagfile describes.

    Returns ``(EvalNetworkConfig, module_config)`` from the flagfile's ``--layers``,
    ``--init_channels``, ``--stem_multiplier``, ``--stem_strides`` and ``--module_config``
    (tools/train.py's defaults for any it omits); its other flags are parsed as
    tools/train.py would, and flags unknown to it ignored. Given `module_config` (the
    search's structure, which its genotype will be retrained with), that is the network's
    structure; a flagfile naming another one is refused, since a budget counted on it would
    be for a network the search does not build. Raises FlagError.
    """
    if not os.path.isfile(path):
        raise FlagError(f"--target_train_flagfile={path!r} is not a file; give a tools/train.py "
                        "flagfile such as flags/fashion_mnist_train.flags.")
    fv = flags.FlagValues()
    ub_flags.define_train_flags(fv)
    try:
        fv(["train", f"--flagfile={path}"], known_only=True)
    except flags.Error as err:
        raise FlagError(f"--target_train_flagfile={path!r}: "
                        f"{ub_flags.explain_flag_error(err, fv)}") from err
    config = EvalNetworkConfig(layers=fv.layers, init_channels=fv.init_channels,
                               stem_multiplier=fv.stem_multiplier, stem_strides=fv.stem_strides)
    if module_config is None:
        return config, fv.module_config
    if fv["module_config"].present and fv.module_config != module_config:
        raise FlagError(f"--module_config={module_config} but --target_train_flagfile={path!r} "
                        f"retrains with --module_config={fv.module_config}: the budget would "
                        "count another network than the one searched; make them the same (or "
                        "leave --module_config out of the flagfile).")
    return config, module_config


def budget_cost_table() -> CostTable | None:
    """The cost table of the search's budget: the network of --target_train_flagfile
    (`read_eval_network`, with the search's --module_config) on --dataset's images, with
    --primitives; None without --target_mops. Built once per process
    (`ubnas_tf.search.budget.dataset_cost_table`). Raises FlagError."""
    if FLAGS.target_mops is None:
        return None
    network, module_config = read_eval_network(FLAGS.target_train_flagfile, FLAGS.module_config)
    primitives = tuple(FLAGS.primitives) if FLAGS.primitives else None
    return dataset_cost_table(FLAGS.dataset, primitives, network, module_config)
