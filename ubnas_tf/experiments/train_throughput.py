"""Retraining-step throughput, trace time and peak memory of an evaluation network.

Prints training images per second of the Keras train step (`model.make_train_function`,
exactly what `model.fit` runs: forward, loss, gradients, Adam update, accuracy metric) for
stage 1 (real activations, binary weights) and stage 2 (fully binary), with the time to
build, trace and run the first step, and the process's peak resident memory. Each
configuration runs in its own subprocess (`--repeats` times, median reported), so that
traces and peak memory do not leak from one measurement into the next.

Presets are the networks of the shipped training flagfiles:

* ``fashion_mnist``: flags/fashion_mnist_train.flags as it is (5 cells of width 32, stride-2
  stem, batch 128, 28x28x1).
* ``cifar10``: flags/cifar10_train.flags shrunk to fit this CPU: 8 cells instead of 20
  (same width 32, batch 128, 32x32x3, auxiliary head and drop-path as in the flagfile).

The genotype defaults to the quick start's search, seed 0 (1.587 MOPs on the fashion_mnist
network; docs/evidence/genotypes/64c3126381be.json).

    python benchmarks/train_throughput.py [--preset fashion_mnist] [--repeats 3]
    python benchmarks/train_throughput.py --jit_compile --steps_per_execution 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from ubnas_tf.genotype import Genotype
from ubnas_tf.graph_optimization import (
    add_graph_optimization_argument,
    apply_graph_optimization_argument,
)
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network
from ubnas_tf.nets.training import compile_for_training

PRESETS = {
    "fashion_mnist": dict(layers=5, init_channels=32, stem_multiplier=4, stem_strides=2,
                          batch=128, image=28, image_channels=1, num_classes=10,
                          auxiliary=False, drop_path=0.0),
    # flags/cifar10_train.flags has 20 cells; 8 keep the structure (2 reductions) and fit.
    "cifar10": dict(layers=8, init_channels=32, stem_multiplier=3, stem_strides=1, batch=128,
                    image=32, image_channels=3, num_classes=10, auxiliary=True, drop_path=0.2),
}
# The quick start's search, seed 0 (1.587 MOPs in the fashion_mnist network): the first
# searched row of the evidence ledger.
DEFAULT_GENOTYPE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "evidence",
                                "genotypes", "64c3126381be.json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion_mnist",
                        help="network of a shipped training flagfile")
    parser.add_argument("--genotype", default=os.path.normpath(DEFAULT_GENOTYPE),
                        help="genotype.json of the cells")
    parser.add_argument("--stages", default="1,2", help="stages to time: 1 (real activations), "
                        "2 (fully binary) or both")
    parser.add_argument("--steps", type=int, default=12, help="timed executions per run")
    parser.add_argument("--warmup_steps", type=int, default=3, help="untimed executions after "
                        "the first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per stage (median reported)")
    parser.add_argument("--jit_compile", action="store_true", help="compile the step with XLA")
    parser.add_argument("--steps_per_execution", type=int, default=1,
                        help="Keras steps per train-function call")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra/inter-op threads (0: TF default)")
    add_graph_optimization_argument(parser, "tools/train.py")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="skip tf.config.experimental.enable_op_determinism(), which "
                        "tools/train.py calls for --seed's exact repeats")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--_child", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _measure(args) -> dict:
    """One run of one stage in this process (the child)."""
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if not args.nondeterministic:
        tf.config.experimental.enable_op_determinism()
    apply_graph_optimization_argument(args)
    p = PRESETS[args.preset]
    tf.keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    net_cfg = EvalNetworkConfig(p["layers"], p["init_channels"], p["stem_multiplier"],
                                p["stem_strides"], p["auxiliary"], p["drop_path"],
                                binary_activations=args._child == 2)
    shape = (p["image"], p["image"], p["image_channels"])
    model = build_eval_network(Genotype.load(args.genotype), shape, p["num_classes"], net_cfg)
    compile_for_training(model, learning_rate=2e-3, decay_steps=1000, label_smoothing=0.1,
                         num_classes=p["num_classes"], auxiliary_weight=0.4 * p["auxiliary"],
                         steps_per_execution=args.steps_per_execution,
                         jit_compile=args.jit_compile)
    n = p["batch"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, p["num_classes"], size=(n, 1)).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, (y, y) if p["auxiliary"] else y)).repeat()
    it = iter(ds)
    train_fn = model.make_train_function()
    float(train_fn(it)["loss"])
    trace_s = time.perf_counter() - t0
    for _ in range(args.warmup_steps):
        train_fn(it)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        float(train_fn(it)["loss"])  # sync
        times.append(time.perf_counter() - t)
    step = float(np.median(times)) / args.steps_per_execution
    return {"images_per_s": n / step, "step_ms": step * 1000, "trace_s": trace_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    if args._child:
        print(json.dumps(_measure(args)), flush=True)
        return {}
    argv = list(sys.argv[1:] if argv is None else argv)
    p = PRESETS[args.preset]
    print(f"{args.preset}: {p['layers']} cells of width {p['init_channels']}, batch {p['batch']}, "
          f"{p['image']}x{p['image']}x{p['image_channels']}; genotype {args.genotype}; "
          f"jit_compile={args.jit_compile}, steps_per_execution={args.steps_per_execution}, "
          f"threads={args.threads or 'default'}, graph optimization {args.graph_optimization}",
          flush=True)
    results = {"config": {k: v for k, v in vars(args).items() if k != "_child"}, "stages": {}}
    for stage in (int(s) for s in args.stages.split(",")):
        runs = []
        for r in range(args.repeats):
            out = subprocess.run([sys.executable, "-m", "ubnas_tf.experiments.train_throughput",
                                  *argv, f"--_child={stage}"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.stderr.write(out.stderr[-3000:])
                raise SystemExit(f"stage {stage} run {r + 1} failed")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  stage {stage} run {r + 1}: {runs[-1]['images_per_s']:.1f} images/s, "
                  f"trace + first step {runs[-1]['trace_s']:.1f} s, peak RSS "
                  f"{runs[-1]['peak_rss_mb']:.0f} MB", flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results["stages"][stage] = {"median": med, "runs": runs}
        print(f"stage {stage} ({'fully binary' if stage == 2 else 'real activations'}): median "
              f"of {len(runs)}: {med['images_per_s']:.1f} images/s ({med['step_ms']:.0f} ms a "
              f"step), trace + first step {med['trace_s']:.1f} s, peak RSS "
              f"{med['peak_rss_mb']:.0f} MB", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


def run() -> None:
    """The ``ubnas-bench-train`` console script (and ``python benchmarks/train_throughput.py``)."""
    main()


if __name__ == "__main__":
    run()
