"""The network a search's budget refers to, read from the command line: the evaluation
network of --target_train_flagfile (a tools/train.py flagfile) and its cost table (OPs, or
the --latency_table's ms), which tools/search.py checks --target_mops / --target_latency_ms
against and puts in its `SearchConfig`."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from ubnas_tf.data import get_info
from ubnas_tf.deploy.latency import NetworkSpec, load_latency_table
from ubnas_tf.errors import FlagError, LatencyTableError
from ubnas_tf.flags import parse_train_flagfile
from ubnas_tf.nets.eval_network import EvalNetworkConfig
from ubnas_tf.ops import resolve_primitives
from ubnas_tf.search.budget import CostTable, dataset_cost_table, latency_cost_table

FLAGS = flags.FLAGS


def eval_network_of(fv: flags.FlagValues) -> EvalNetworkConfig:
    """The evaluation network of parsed retraining flags
    (`ubnas_tf.flags.parse_train_flagfile`)."""
    return EvalNetworkConfig(layers=fv.layers, init_channels=fv.init_channels,
                             stem_multiplier=fv.stem_multiplier, stem_strides=fv.stem_strides)


def read_eval_network(path: str, module_config: str | None = None
                      ) -> tuple[EvalNetworkConfig, str]:
    """The evaluation network a retraining flagfile describes.

    Returns ``(EvalNetworkConfig, module_config)`` from the flagfile's ``--layers``,
    ``--init_channels``, ``--stem_multiplier``, ``--stem_strides`` and ``--module_config``
    (`ubnas_tf.flags.parse_train_flagfile`). Given `module_config` (the search's structure,
    which its genotype will be retrained with), that is the network's structure; a flagfile
    naming another one is refused, since a budget counted on it would be for a network the
    search does not build. Raises FlagError.
    """
    fv = parse_train_flagfile(path, "--target_train_flagfile")
    config = eval_network_of(fv)
    if module_config is None:
        return config, fv.module_config
    if fv["module_config"].present and fv.module_config != module_config:
        raise FlagError(f"--module_config={module_config} but --target_train_flagfile={path!r} "
                        f"retrains with --module_config={fv.module_config}: the budget would "
                        "count another network than the one searched; make them the same (or "
                        "leave --module_config out of the flagfile).")
    return config, module_config


def network_spec(dataset: str, network: EvalNetworkConfig, module_config: str,
                 primitives: Sequence[str] | None) -> NetworkSpec:
    """What a latency table is measured for: `network` on `dataset`'s images and classes,
    with `module_config` and `primitives` (None: the default search space)."""
    info = get_info(dataset)
    return NetworkSpec(tuple(info.image_shape), info.num_classes, network.layers,
                       network.init_channels, network.stem_multiplier, network.stem_strides,
                       module_config, tuple(resolve_primitives(primitives)))


def budget_cost_table() -> CostTable | None:
    """The cost table of the search's budget: the network of --target_train_flagfile
    (`read_eval_network`, with the search's --module_config) on --dataset's images, with
    --primitives; in OPs for --target_mops (built once per process,
    `ubnas_tf.search.budget.dataset_cost_table`), in ms from --latency_table for
    --target_latency_ms (refused unless measured for that network and those primitives);
    None without a budget. Raises FlagError."""
    if FLAGS.target_mops is None and FLAGS.target_latency_ms is None:
        return None
    network, module_config = read_eval_network(FLAGS.target_train_flagfile, FLAGS.module_config)
    primitives = tuple(FLAGS.primitives) if FLAGS.primitives else None
    if FLAGS.target_mops is not None:
        return dataset_cost_table(FLAGS.dataset, primitives, network, module_config)
    try:
        table = load_latency_table(FLAGS.latency_table)
    except LatencyTableError as err:
        raise FlagError(f"--latency_table: {err}") from None
    wanted = network_spec(FLAGS.dataset, network, module_config, primitives)
    mismatch = table.network.mismatch(wanted)
    if mismatch:
        raise FlagError(f"--latency_table={FLAGS.latency_table} was measured for another network "
                        f"than --target_train_flagfile={FLAGS.target_train_flagfile} on "
                        f"--dataset={FLAGS.dataset}: {mismatch}. Measure one with "
                        f"tools/latency_table.py --train_flagfile={FLAGS.target_train_flagfile}.")
    return latency_cost_table(table, wanted.primitives)
