"""How much work Grappler does on a train function's graph before its first step, on a CPU.

Before the first step of a `tf.function`, TensorFlow inlines its nested functions and hands
the graph to Grappler. The search's train function inlines to about 57,000 nodes; Grappler's
default pipeline then spends about 13 s on it on the project's 2-core CPU, of which about
4 s in the memory optimizer and about 3.5 s in a second pass of all optimizers that changes
1 % of the nodes (`docs/speed.md`, "Training the one-padded convs without their padding;
Grappler once"). On a CPU neither buys anything measurable: the memory optimizer's swapping
is for GPUs, and the step runs as fast after one pass.

`use_lean_graph_optimization` turns both off for the calling thread's `tf.function` calls,
when no GPU is visible, and with them the passes that changed (almost) nothing of the search's
graph on a CPU: the layout optimizer and the implementation selector, which rewrite only for
GPUs (0.7 s, no node changed); the remapper (1.0 s, 2 nodes of 21,000 fused), the loop
optimizer (0.2 s, none) and the MLIR (TFG) passes (1.0 s, none). TensorFlow offers no public
setting for the first two, so this sets the `RewriterConfig` of the eager context's
function-call options (TensorFlow's own `tf.config.optimizer.set_experimental_options`
rebuilds those options, so call this after it). Pruning, common-subgraph elimination,
constant folding, the arithmetic and dependency optimizers run as before.
"""

from __future__ import annotations

import argparse

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

__all__ = ["add_graph_optimization_argument", "apply_graph_optimization_argument",
           "lean_graph_optimization_active", "use_lean_graph_optimization"]

_RewriterConfig = rewriter_config_pb2.RewriterConfig


def _function_config() -> config_pb2.ConfigProto:
    config = config_pb2.ConfigProto()
    config.ParseFromString(context.context().function_call_options.config_proto_serialized)
    return config


def use_lean_graph_optimization(force: bool = False) -> bool:
    """Runs Grappler once, without its memory optimizer (nor its GPU-only layout optimizer
    and implementation selector, its remapper, loop optimizer and TFG passes), on the graphs
    of this thread's `tf.function` calls; only when no GPU is visible, unless `force`.

    Takes effect for functions first called afterwards. Returns whether it was applied.
    """
    if not force and tf.config.list_physical_devices("GPU"):
        return False
    config = _function_config()
    rewrites = config.graph_options.rewrite_options
    rewrites.memory_optimization = _RewriterConfig.NO_MEM_OPT
    rewrites.meta_optimizer_iterations = _RewriterConfig.ONE
    rewrites.layout_optimizer = _RewriterConfig.OFF
    rewrites.implementation_selector = _RewriterConfig.OFF
    rewrites.remapping = _RewriterConfig.OFF
    rewrites.loop_optimization = _RewriterConfig.OFF
    rewrites.disable_tfg_optimizer = True
    context.context().function_call_options = context.FunctionCallOptions(
        executor_type=context.context().function_call_options.executor_type, config_proto=config)
    return True


def lean_graph_optimization_active() -> bool:
    """Whether this thread's `tf.function` calls run the lean Grappler pipeline."""
    rewrites = _function_config().graph_options.rewrite_options
    return (rewrites.memory_optimization == _RewriterConfig.NO_MEM_OPT
            and rewrites.meta_optimizer_iterations == _RewriterConfig.ONE)


def add_graph_optimization_argument(parser: argparse.ArgumentParser, tool: str) -> None:
    """A benchmark's ``--graph_optimization`` option: ``lean`` (what `tool` runs on a CPU) or
    ``default`` (TensorFlow's pipeline), so that its output names both before and after."""
    parser.add_argument("--graph_optimization", choices=("lean", "default"), default="lean",
                        help=f"Grappler pipeline: lean (what {tool} runs on a CPU; "
                        "ubnas_tf.graph_optimization) or TensorFlow's default")


def apply_graph_optimization_argument(args: argparse.Namespace) -> None:
    """Applies the pipeline `add_graph_optimization_argument`'s option chose."""
    if args.graph_optimization == "lean":
        use_lean_graph_optimization()
