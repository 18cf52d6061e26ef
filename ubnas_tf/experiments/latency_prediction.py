"""How well a latency table predicts whole networks, and how much OPs miss.

    python benchmarks/latency_prediction.py --latency_table=runs/latency/x86.json \\
        --output=docs/latency/prediction_x86.json

For every network (the genotypes in --genotypes, by default the evidence ledger's, which are
all near 1.5 MOPs, plus --random uniform random genotypes, which span the derivable range),
the evaluation network of the table is built, converted by LCE and timed whole with the
table's threads and statistic (all networks in each round, in a fresh random order), and set
against the table's prediction (`ubnas_tf.search.budget.latency_cost_table`) and its OPs.

Prints per network: MOPs, predicted and measured ms, the error; then Spearman's rho and the
mean and largest absolute relative error of the prediction, the same rho for OPs, and the
spread of measured latency among the networks within --ops_tolerance of --near_mops.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import statistics
import sys

import numpy as np
import tensorflow as tf
from absl import flags, logging

from ubnas_tf.deploy.convert import check_binary_ops, convert_model
from ubnas_tf.deploy.latency import (
    load_latency_table,
    measure_parts,
    trained_like_batch_norm,
)
from ubnas_tf.errors import LatencyTableError
from ubnas_tf.evidence.sampling import short_genotype
from ubnas_tf.flags import program_name, run_main
from ubnas_tf.genotype import Genotype, random_genotype
from ubnas_tf.io_utils import atomic_write_bytes, atomic_write_json
from ubnas_tf.nets.eval_network import build_eval_network
from ubnas_tf.search.budget import build_cost_table, latency_cost_table
from ubnas_tf.tables import text_table

FLAGS = flags.FLAGS
flags.DEFINE_string("latency_table", None, "The table to validate (tools/latency_table.py).")
flags.DEFINE_string("genotypes", "docs/evidence/genotypes/*.json",
                    "Glob of genotype JSON files to time.")
flags.DEFINE_integer("max_genotypes", 8, "At most this many of the --genotypes files (the "
                     "first in name order).", lower_bound=0)
flags.DEFINE_string("cache_dir", "runs/latency_prediction",
                    "Converted networks are kept here, so that a re-run times them again "
                    "without converting (LCE takes about a minute per network on 2 cores).")
flags.DEFINE_integer("random", 6, "Uniform random genotypes added (any cost).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the random genotypes and of the rounds' order.")
flags.DEFINE_integer("rounds", 10, "Rounds over all networks.", lower_bound=1)
flags.DEFINE_integer("runs", 20, "Timed inferences per network and round.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untimed inferences of each network first.", lower_bound=0)
flags.DEFINE_float("near_mops", 1.5, "The OPs level whose latency spread is reported.")
flags.DEFINE_float("ops_tolerance", 0.15, "Relative distance from --near_mops that counts as "
                   "equal OPs.", lower_bound=0.0)
flags.DEFINE_string("output", None, "Also write the figures and rows to this JSON file.")
flags.mark_flag_as_required("latency_table")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def networks(table, pattern: str, limit: int, random: int, seed: int) -> dict[str, object]:
    """Name -> genotype: the first `limit` files matching `pattern`, then `random` uniform
    draws."""
    out = {}
    for path in sorted(glob.glob(pattern))[:limit]:
        out[os.path.splitext(os.path.basename(path))[0]] = Genotype.load(path)
    rng = np.random.default_rng(seed)
    for _ in range(random):
        genotype = random_genotype(table.network.primitives, table.network.steps, rng)
        out[f"random {short_genotype(genotype)[:20]}"] = genotype
    return out


def measure_networks(table, genotypes: dict[str, object], rounds: int, runs: int, warmup: int,
                     seed: int, cache_dir: str | None = None) -> dict[str, float]:
    """Whole-network batch-1 ms of each genotype's evaluation network on LCE, with the
    table's threads and statistic (`ubnas_tf.deploy.latency.measure_parts`). Converted
    networks are kept in `cache_dir`, keyed by the network and the genotype."""
    spec = table.network
    flatbuffers = {}
    for n, (name, genotype) in enumerate(genotypes.items(), 1):
        key = hashlib.sha256(json.dumps([spec.to_dict(), genotype.to_dict()],
                                        sort_keys=True).encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"{key}.tflite") if cache_dir else None
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                flatbuffers[name] = f.read()
            continue
        model = build_eval_network(genotype, spec.input_shape, spec.num_classes,
                                   spec.eval_config, spec.module_config)
        trained_like_batch_norm(model)
        flatbuffers[name] = convert_model(model)
        check_binary_ops(model, flatbuffers[name])
        tf.keras.backend.clear_session()
        if path:
            atomic_write_bytes(path, flatbuffers[name])
        _log(f"converted {n}/{len(genotypes)}: {name}")
    return measure_parts(flatbuffers, int(table.runtime.get("num_threads", 1)), rounds, runs,
                         warmup, seed, progress=_log)


def figures(rows: list[dict], near_mops: float, tolerance: float) -> dict:
    """Spearman rho (scipy) of prediction and of OPs against measured ms, the prediction's
    mean and largest absolute relative error, and the measured spread at about `near_mops`."""
    from scipy import stats  # deferred: scipy.stats is slow to import (0.3 s)

    measured = [r["measured_ms"] for r in rows]
    errors = [abs(r["error"]) for r in rows]
    near = [r["measured_ms"] for r in rows if abs(r["mops"] - near_mops) <= tolerance * near_mops]
    return {
        "networks": len(rows),
        "spearman_prediction": float(stats.spearmanr([r["predicted_ms"] for r in rows],
                                                     measured).statistic),
        "spearman_mops": float(stats.spearmanr([r["mops"] for r in rows], measured).statistic),
        "mean_abs_error": statistics.fmean(errors),
        "max_abs_error": max(errors),
        "near_mops": {"mops": near_mops, "tolerance": tolerance, "n": len(near),
                      "min_ms": min(near, default=None), "max_ms": max(near, default=None),
                      "ratio": max(near) / min(near) if len(near) > 1 else None,
                      "cv": statistics.stdev(near) / statistics.fmean(near)
                      if len(near) > 1 else None},
    }


def main(argv: list[str]) -> int:
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel INFO lines drown the progress
    try:
        table = load_latency_table(FLAGS.latency_table)
    except LatencyTableError as err:
        print(f"{program_name()}: error: --latency_table: {err}", file=sys.stderr)
        return 2
    genotypes = networks(table, FLAGS.genotypes, FLAGS.max_genotypes, FLAGS.random, FLAGS.seed)
    if len(genotypes) < 2:
        print(f"{program_name()}: error: --genotypes={FLAGS.genotypes!r} and --random give "
              f"{len(genotypes)} network(s); at least 2 are needed.", file=sys.stderr)
        return 2
    spec = table.network
    latency = latency_cost_table(table)
    mops = build_cost_table(spec.primitives, spec.input_shape, spec.num_classes,
                            spec.eval_config, spec.module_config, spec.steps)
    measured = measure_networks(table, genotypes, FLAGS.rounds, FLAGS.runs, FLAGS.warmup,
                                FLAGS.seed, FLAGS.cache_dir)
    rows = []
    for name, genotype in genotypes.items():
        predicted = latency.genotype_cost(genotype)
        rows.append({"network": name, "genotype": genotype.to_dict(),
                     "mops": mops.genotype_cost(genotype), "predicted_ms": predicted,
                     "measured_ms": measured[name],
                     "error": predicted / measured[name] - 1.0})
    rows.sort(key=lambda r: r["measured_ms"])
    print(text_table(["network", "MOPs", "predicted ms", "measured ms", "error"],
                     [[r["network"], f"{r['mops']:.3f}", f"{r['predicted_ms']:.3f}",
                       f"{r['measured_ms']:.3f}", f"{r['error']:+.1%}"] for r in rows]))
    result = figures(rows, FLAGS.near_mops, FLAGS.ops_tolerance)
    near = result["near_mops"]
    print(f"\n{result['networks']} networks, {table.runtime.get('num_threads')} thread(s), "
          f"{table.device.get('processor') or table.device}")
    print(f"prediction: Spearman rho {result['spearman_prediction']:.3f}, mean |error| "
          f"{result['mean_abs_error']:.1%}, largest {result['max_abs_error']:.1%}")
    print(f"OPs: Spearman rho {result['spearman_mops']:.3f} against measured latency")
    if near["ratio"] is not None:
        print(f"{near['n']} networks within {near['tolerance']:.0%} of {near['mops']} MOPs: "
              f"{near['min_ms']:.3f} to {near['max_ms']:.3f} ms (x{near['ratio']:.2f}, "
              f"CV {near['cv']:.1%})")
    if FLAGS.output:
        atomic_write_json(FLAGS.output, {"latency_table": FLAGS.latency_table,
                                         "device": dict(table.device),
                                         "runtime": dict(table.runtime),
                                         "figures": result, "rows": rows})
        print(f"wrote {FLAGS.output}")
    return 0


def run() -> None:
    """The ``ubnas-bench-latency-prediction`` console script (and
    ``python benchmarks/latency_prediction.py``)."""
    run_main(__name__, main)


if __name__ == "__main__":
    run()
