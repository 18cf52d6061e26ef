"""Batch-1 inference latency of binary networks on the LCE interpreter.

    python benchmarks/inference_latency.py                       # larq-zoo references
    python benchmarks/inference_latency.py --model=runs/x/model.keras \\
        --nozoo                                                 # ours, binary vs float

Entries:
* larq-zoo QuickNetSmall, QuickNet and Bi-Real Net (random weights: latency does not
  depend on them; BatchNorm made trained-like, as for our networks, since LCE's converter
  does depend on it) at --zoo_input_size, converted with LCE;
* --model: a binary Keras model, converted with LCE (its binary convs must become
  LceBconv2d, else it is reported);
* the same architecture in float (--model with its quantizers removed, or --float_model),
  converted by the plain TFLite converter and timed with XNNPACK, TFLite's fastest float
  path on CPU.

LCE's optimised binary kernels are written for 64-bit ARM; on x86 it runs portable C++
(with `use_indirect_bgemm=True`, several times faster than the default there), so x86
timings understate the speed-up of binary networks on a phone.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import larq  # noqa: F401  (registers Larq layers for load_model)
import tensorflow as tf
from absl import flags

from ubnas_tf import io_utils
from ubnas_tf.cost import model_cost
from ubnas_tf.deploy.convert import (
    binary_conv_layers,
    convert_model,
    flatbuffer_op_counts,
    float32_clone,
    float_architecture,
    load_saved_model,
    uses_reduced_precision,
)
from ubnas_tf.deploy.latency import measure_latency, trained_like_batch_norm
from ubnas_tf.flags import run_main
from ubnas_tf.genotype import Genotype
from ubnas_tf.modules import get_module_config
from ubnas_tf.nets import EvalNetworkConfig, build_eval_network
from ubnas_tf.tables import text_table

__all__ = ["Entry", "lce_entry", "float_entry", "zoo_model", "zoo_entries", "run",
           "table"]

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Entry:
    """One model to time: its flatbuffer and how to run it."""

    name: str
    kind: str  # "binary (LCE)" or "float (TFLite)"
    flatbuffer: bytes
    use_xnnpack: bool
    convert_s: float
    mops: float | None = None  # OPs = BOPs/64 + FLOPs, in millions
    n_binary_convs: int | None = None
    n_lce_bconv: int | None = None
    note: str = ""

    @property
    def size_kb(self) -> float:
        return len(self.flatbuffer) / 1024


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lce_entry(name: str, model: Any) -> Entry:
    """Converts a binary Keras model with LCE; notes binary convs that stayed float."""
    _log(f"[{name}] converting with LCE...")
    start = time.perf_counter()
    flatbuffer = convert_model(model)
    seconds = time.perf_counter() - start
    n_bconv = flatbuffer_op_counts(flatbuffer).get("LceBconv2d", 0)
    n_binary = len(binary_conv_layers(model))
    note = ""
    if n_bconv < n_binary:
        note = f"{n_binary - n_bconv} binary convs ran in float"
        _log(f"[{name}] WARNING: {note} (see ubnas_tf.deploy.verify_conversion)")
    return Entry(
        name=name,
        kind="binary (LCE)",
        flatbuffer=flatbuffer,
        use_xnnpack=False,
        convert_s=seconds,
        mops=model_cost(model).ops / 1e6,
        n_binary_convs=n_binary,
        n_lce_bconv=n_bconv,
        note=note,
    )


def float_entry(name: str, model: Any) -> Entry:
    """Converts a float Keras model with the plain TFLite converter (no LCE), to be timed
    with XNNPACK."""
    _log(f"[{name}] converting with the TFLite converter...")
    if uses_reduced_precision(model):
        model = float32_clone(model)
    start = time.perf_counter()
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    seconds = time.perf_counter() - start
    return Entry(
        name=name,
        kind="float (TFLite)",
        flatbuffer=flatbuffer,
        use_xnnpack=True,
        convert_s=seconds,
        mops=model_cost(model).ops / 1e6,
    )


ZOO_MODELS = ("QuickNetSmall", "QuickNet", "BiRealNet")


def zoo_model(name: str, input_size: int = 224, seed: int = 0) -> Any:
    """A larq-zoo reference model with random weights (no download) and BatchNorm made
    trained-like exactly as for our networks, so both are converted on equal terms."""
    import larq_zoo as lqz  # deferred: slow import (0.7 s), only for the --zoo references

    fn = {"QuickNetSmall": lqz.sota.QuickNetSmall, "QuickNet": lqz.sota.QuickNet,
          "BiRealNet": lqz.literature.BiRealNet}[name]
    model = fn(input_shape=(input_size, input_size, 3), weights=None)
    trained_like_batch_norm(model, seed)
    return model


def zoo_entries(input_size: int = 224) -> list[Callable[[], Entry]]:
    """Lazy builders for the larq-zoo reference models (see `zoo_model`)."""

    def builder(name: str) -> Callable[[], Entry]:
        def build() -> Entry:
            _log(f"[{name}] building {input_size}x{input_size}x3 with weights=None...")
            tf.keras.backend.clear_session()
            return lce_entry(name, zoo_model(name, input_size))

        return build

    return [builder(name) for name in ZOO_MODELS]


def genotype_entries(genotype_path: str) -> list[Callable[[], Entry]]:
    """Our network built from a genotype at the --input_shape / --layers / ... configuration
    (random weights, BN made trained-like): (a) binary through LCE and (b) the same
    architecture in float."""
    shape = tuple(int(d) for d in FLAGS.input_shape)
    label = f"ours {shape[0]}x{shape[1]}"

    def build(binary: bool):
        tf.keras.backend.clear_session()
        cfg = get_module_config(FLAGS.module_config)
        if not binary:
            cfg = dataclasses.replace(cfg, activation_quantizer=None, kernel_quantizer=None)
        _log(f"[{label}] building the {'binary' if binary else 'float'} network "
             f"({FLAGS.layers} cells, width {FLAGS.init_channels})...")
        net = EvalNetworkConfig(layers=FLAGS.layers, init_channels=FLAGS.init_channels,
                                stem_multiplier=FLAGS.stem_multiplier,
                                stem_strides=FLAGS.stem_strides)
        model = build_eval_network(Genotype.load(genotype_path), shape, FLAGS.num_classes, net,
                                   cfg, allow_unaligned=True)
        trained_like_batch_norm(model)
        return model

    return [lambda: lce_entry(f"{label} (binary)", build(True)),
            lambda: float_entry(f"{label} (float)", build(False))]


def measure(
    builders: Sequence[Callable[[], Entry]],
    threads: Sequence[int] = (1, 2),
    warmup: int = 3,
    runs: int = 20,
) -> list[dict[str, Any]]:
    """Builds each entry, times it at each thread count, returns one row per entry."""
    rows = []
    for build in builders:
        entry = build()
        row: dict[str, Any] = {
            "name": entry.name,
            "kind": entry.kind,
            "size_kb": entry.size_kb,
            "mops": entry.mops,
            "convert_s": entry.convert_s,
            "n_binary_convs": entry.n_binary_convs,
            "n_lce_bconv": entry.n_lce_bconv,
            "use_xnnpack": entry.use_xnnpack,
            "note": entry.note,
            "latency": {},
        }
        for n in threads:
            _log(f"[{entry.name}] timing {runs} runs at {n} thread(s)...")
            result = measure_latency(
                entry.flatbuffer, num_threads=n, use_xnnpack=entry.use_xnnpack,
                warmup=warmup, runs=runs,
            )  # fmt: skip
            row["latency"][str(n)] = result
            _log(f"[{entry.name}] {n} thread(s): median {result['median_ms']:.1f} ms")
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]], threads: Sequence[int]) -> str:
    """Fixed-width table: model, kind, size, OPs, LceBconv2d/binary convs, median latency."""
    header = ["Model", "Kind", "Size (KB)", "OPs (M)", "bconv/binary"]
    header += [f"{n} thr median (mean) ms" for n in threads]
    lines = []
    for r in rows:
        bconv = "-" if r["n_binary_convs"] is None else f"{r['n_lce_bconv']}/{r['n_binary_convs']}"
        cells = [
            r["name"],
            r["kind"] + (" +XNNPACK" if r["use_xnnpack"] else ""),
            f"{r['size_kb']:,.0f}",
            "?" if r["mops"] is None else f"{r['mops']:,.1f}",
            bconv,
        ]
        for n in threads:
            lat = r["latency"][str(n)]
            cells.append(f"{lat['median_ms']:.1f} ({lat['mean_ms']:.1f})")
        lines.append(cells)
    out = [text_table(header, lines, left=2, framed=True)]
    out += [f"note: {r['name']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(out)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments: {argv[1:]}")
    threads = [int(n) for n in FLAGS.threads]
    builders: list[Callable[[], Entry]] = []
    try:  # a bad path fails here, before any conversion starts
        model = load_saved_model(FLAGS.model, "model") if FLAGS.model else None
        float_model = (load_saved_model(FLAGS.float_model, "float_model")
                       if FLAGS.float_model else None)
    except ValueError as err:
        raise SystemExit(f"Error: {err}") from None
    if model is not None:
        builders.append(lambda: lce_entry("ours (binary)", model))
        if float_model is None and FLAGS.float_of_model:
            builders.append(lambda: float_entry("ours (float)", float_architecture(model)))
    if float_model is not None:
        builders.append(lambda: float_entry("ours (float)", float_model))
    if FLAGS.genotype:
        builders += genotype_entries(FLAGS.genotype)
    if FLAGS.zoo:
        builders += zoo_entries(FLAGS.zoo_input_size)
    if not builders:
        raise SystemExit("Nothing to time: give --model/--float_model/--genotype or keep --zoo.")
    rows = measure(builders, threads=threads, warmup=FLAGS.warmup, runs=FLAGS.runs)
    print(f"Batch-1 latency, LCE {_lce_version()} interpreter, {platform.machine()} "
          f"({os.cpu_count()} cores), use_indirect_bgemm=True, {FLAGS.runs} runs "
          f"after {FLAGS.warmup} warm-up")  # fmt: skip
    print(table(rows, threads))
    if FLAGS.output:
        io_utils.atomic_write_json(FLAGS.output, {"threads": threads, "rows": rows})
        print(f"wrote {FLAGS.output}")


def _lce_version() -> str:
    try:
        return version("larq-compute-engine")
    except Exception:  # the version is cosmetic
        return "?"


def _define_flags() -> None:
    flags.DEFINE_string(
        "model", None, "A binary Keras model (.keras/SavedModel) to convert with LCE and time."
    )
    flags.DEFINE_string(
        "float_model",
        None,
        "The same architecture in float, converted with the plain TFLite converter and timed with XNNPACK.",
    )
    flags.DEFINE_bool(
        "float_of_model", True,
        "Without --float_model, also time --model's own architecture in float (quantizers "
        "removed, ubnas_tf.deploy.float_architecture) with the plain TFLite converter and XNNPACK.",
    )
    flags.DEFINE_string(
        "genotype", None,
        "Also time our network built from this genotype.json (random weights) at "
        "--input_shape: binary through LCE and the same architecture in float.",
    )
    flags.DEFINE_list("input_shape", ["224", "224", "3"],
                      "Input height, width, channels of the --genotype network.")
    flags.DEFINE_integer("num_classes", 1000, "Classes of the --genotype network.")
    flags.DEFINE_integer("layers", 14, "Cells of the --genotype network (ImageNet flagfile: 14).")
    flags.DEFINE_integer("init_channels", 64, "Width of the --genotype network's first cells.")
    flags.DEFINE_integer("stem_multiplier", 1, "Stem width multiplier of the --genotype network.")
    flags.DEFINE_integer("stem_strides", 8, "Total stem stride of the --genotype network.")
    flags.DEFINE_string("module_config", "universal", "Module structure of the --genotype network.")
    flags.DEFINE_bool(
        "zoo", True, "Include larq-zoo QuickNetSmall, QuickNet and Bi-Real Net as references."
    )
    flags.DEFINE_integer(
        "zoo_input_size", 224, "Input height and width of the larq-zoo models.", lower_bound=32
    )
    flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts to time each model at.")
    flags.DEFINE_integer("warmup", 3, "Untimed inferences before timing.", lower_bound=0)
    flags.DEFINE_integer(
        "runs", 20, "Timed batch-1 inferences per model and thread count.", lower_bound=1
    )
    flags.DEFINE_string(
        "output", None, "If set, the measurements are also written to this JSON file."
    )


def run() -> None:
    """The ``ubnas-bench-latency`` console script (and ``python benchmarks/inference_latency.py``)."""
    _define_flags()
    run_main(__name__, main)


if __name__ == "__main__":
    run()
