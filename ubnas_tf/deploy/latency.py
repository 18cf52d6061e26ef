r"""Measured LCE latency of an evaluation network's parts: the latency table.

OPs (BOPs/64 + FLOPs) predict LCE latency poorly: binary-conv cost steps with input channels
in multiples of 32, LCE fuses BatchNorm into ``LceBconv2d``, and full-precision work (stem,
pooling, adds, quantize, classifier) is a large share of the run time. ProxylessNAS and
FBNet search float networks against per-op latency look-up tables; this is such a table for
binary networks on the Larq Compute Engine.

A network's batch-1 latency is modelled as a sum over its parts,

\[ \hat L = L_{overhead} + L_{stem} + \sum_{cells}\Big(\sum_j L_{pre_j} + L_{nodes}
   + \sum_{edges} L_{op}\Big) + L_{classifier}, \]

where every part is timed alone: the part's layers (an op's whole module: BN, quantizer,
binary conv, BN, shortcut) in a one-input model, converted by LCE, run by LCE's interpreter
at batch 1, minus \(L_{overhead}\), the time of an empty model (the per-invoke cost that the
whole network pays once). Parts:

* ``op/NAME/cC/HxW/sS``: a searchable op on an H x W x C input with stride S, wherever the
  network has one (`ubnas_tf.nets.eval_network.op_places`);
* ``stem``, ``classifier`` (global pool, BN, dense);
* ``cell_I/preprocess0``, ``cell_I/preprocess1``: cell I's input convs (a derived cell
  always reads both inputs);
* ``cell_I/nodes``: the node sums and the concatenation of cell I;
* ``cell_I/fixed_reduction``: a fixed reduction block (`ModuleConfig.reduction`).

The statistic is robust to a shared machine: each part runs `runs` times per round, rounds
go through the parts in a fresh random order, and a part's latency is its minimum over all
runs of all rounds: its time when nothing else got in the way. Not a mean or a median,
because on a virtual machine a neighbour's burst slows whole blocks of runs: on the 2-core VM
here, the median of 200 runs of one network moved between 1.77 and 2.63 ms from one block to
the next while the minimum stayed within 1.64 to 1.66 ms; the rounds spread each part's runs
over time, so one slow spell cannot hold all of them.

On x86 LCE runs portable C++ kernels, not its ARM ones: an x86 table is for x86. For a phone,
`export_parts` writes every part as a ``.tflite`` file with a manifest; the user times them
with LCE's ``lce_benchmark_model`` on the phone and `table_from_timings` turns the times into
a table (see docs/latency.md).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np
import tensorflow as tf

from ubnas_tf.cost import iter_layers
from ubnas_tf.deploy.convert import check_binary_ops, convert_model, lce_interpreter
from ubnas_tf.errors import LatencyTableError
from ubnas_tf.genotype import NONE_OP, Genotype
from ubnas_tf.io_utils import atomic_write_bytes, atomic_write_json, read_json
from ubnas_tf.modules import get_module_config
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network, op_places
from ubnas_tf.ops import build_op

__all__ = ["LatencyTable", "NetworkSpec", "PARTS_FORMAT", "TABLE_FORMAT", "export_parts",
           "load_latency_table", "measure_latency", "measure_parts", "network_parts",
           "op_key", "table_from_timings", "trained_like_batch_norm"]

TABLE_FORMAT = "ubnas-latency-table/1"
PARTS_FORMAT = "ubnas-latency-parts/1"
OVERHEAD = "overhead"


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The evaluation network a table is for: the dataset's images and classes, the shape
    flags of a tools/train.py flagfile, its module structure, and the search space."""

    input_shape: tuple[int, int, int]
    num_classes: int
    layers: int
    init_channels: int
    stem_multiplier: int
    stem_strides: int
    module_config: str
    primitives: tuple[str, ...]
    steps: int = 4

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape),
                "primitives": list(self.primitives)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "table") -> NetworkSpec:
        try:
            return cls(input_shape=tuple(int(v) for v in d["input_shape"]),
                       num_classes=int(d["num_classes"]), layers=int(d["layers"]),
                       init_channels=int(d["init_channels"]),
                       stem_multiplier=int(d["stem_multiplier"]),
                       stem_strides=int(d["stem_strides"]), module_config=str(d["module_config"]),
                       primitives=tuple(str(p) for p in d["primitives"]),
                       steps=int(d.get("steps", 4)))
        except (KeyError, TypeError, ValueError) as err:
            raise LatencyTableError(f"{where}: its `network` entry is incomplete or malformed "
                                    f"({type(err).__name__}: {err}).") from None

    @property
    def eval_config(self):
        return EvalNetworkConfig(layers=self.layers, init_channels=self.init_channels,
                                 stem_multiplier=self.stem_multiplier,
                                 stem_strides=self.stem_strides)

    def mismatch(self, other: NetworkSpec) -> str | None:
        """What differs between the network of a table (self) and `other`, the one a search
        budgets, in one line; None if the table covers it (same network, and every primitive
        of `other` measured)."""
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [f"{k} {mine[k]} (table) vs {theirs[k]}" for k in mine
                 if k != "primitives" and mine[k] != theirs[k]]
        missing = [p for p in other.primitives if p not in self.primitives and p != "none"]
        if missing:
            diffs.append(f"primitives {missing} not in the table")
        return "; ".join(diffs) or None


def op_key(name: str, channels: int, height: int, width: int, strides: int) -> str:
    """The table key of op `name` on a `height` x `width` x `channels` input."""
    return f"op/{name}/c{channels}/{height}x{width}/s{strides}"


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per part of one network on one device (see the module docstring).

    Attributes:
        network: the network and search space it was measured for.
        entries: part key -> ms, the empty model's time already subtracted (>= 0).
        overhead_ms: the empty model's time, paid once per inference.
        device: where it was measured (``machine``, ``processor``, ``description``...).
        runtime: ``lce_version``, ``num_threads`` and the interpreter's settings.
        measurement: how (``rounds``, ``runs``, ``warmup``, ``statistic``, the load average
            before and after, or ``imported_from`` for a phone's timings).
    """

    network: NetworkSpec
    entries: Mapping[str, float]
    overhead_ms: float
    device: Mapping[str, Any]
    runtime: Mapping[str, Any]
    measurement: Mapping[str, Any]

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "network": self.network.to_dict(),
                "overhead_ms": self.overhead_ms, "device": dict(self.device),
                "runtime": dict(self.runtime), "measurement": dict(self.measurement),
                "entries": dict(sorted(self.entries.items()))}

    @classmethod
    def from_dict(cls, d: Any, where: str = "table") -> LatencyTable:
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise LatencyTableError(f"{where} is not a latency table: its format is {found!r}, "
                                    f"not {TABLE_FORMAT!r} (write one with "
                                    "tools/latency_table.py).")
        network = NetworkSpec.from_dict(d.get("network") or {}, where)
        entries = d.get("entries")
        if not isinstance(entries, dict) or not entries:
            raise LatencyTableError(f"{where} has no `entries` (part -> ms).")
        bad = [k for k, v in entries.items()
               if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0]
        overhead = d.get("overhead_ms")
        if bad or not isinstance(overhead, (int, float)) or not overhead >= 0:
            raise LatencyTableError(f"{where}: latencies must be finite numbers >= 0 (ms); "
                                    f"not so for {(bad or ['overhead_ms'])[:3]}.")
        missing = sorted(set(network_part_keys(network)) - set(entries))
        if missing:
            raise LatencyTableError(f"{where} lacks {len(missing)} part(s) of its own network, "
                                    f"e.g. {missing[:3]}; measure it again.")
        return cls(network, {k: float(v) for k, v in entries.items()}, float(overhead),
                   d.get("device") or {}, d.get("runtime") or {}, d.get("measurement") or {})

    def save(self, path: str) -> None:
        atomic_write_json(path, self.to_dict())


def load_latency_table(path: str) -> LatencyTable:
    """Reads and checks a latency table file; raises LatencyTableError naming `path`."""
    if not os.path.isfile(path):
        raise LatencyTableError(f"{path} is not a file; write a latency table with "
                                "tools/latency_table.py.")
    try:
        data = read_json(path)
    except ValueError as err:
        raise LatencyTableError(f"{path} is not JSON ({err}).") from None
    return LatencyTable.from_dict(data, path)


# -- the parts of a network -----------------------------------------------------------------


def _reference_network(spec: NetworkSpec):
    """The evaluation network with every edge the first usable primitive: its layers give
    the shapes and configs of the genotype-independent parts."""
    usable = next(p for p in spec.primitives if p != NONE_OP)
    concat = tuple(range(2, spec.steps + 2))
    cell = tuple((usable, j) for _ in range(spec.steps) for j in (0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unaligned widths are timed as they are
        return build_eval_network(Genotype(cell, concat, cell, concat), spec.input_shape,
                                  spec.num_classes, spec.eval_config, spec.module_config,
                                  allow_unaligned=True)


def _clone(layer):
    return type(layer).from_config(layer.get_config())


def _single_input_model(shape, layers: Sequence, name: str):
    inputs = tf.keras.Input(tuple(shape))
    x = inputs
    for layer in layers:
        x = _clone(layer)(x)
    return tf.keras.Model(inputs, x, name=re.sub(r"[^A-Za-z0-9_]", "_", name))


def _nodes_model(shape, steps: int, name: str):
    """A cell's node sums and concatenation on node outputs of `shape`."""
    inputs = tf.keras.Input(tuple(shape))
    nodes = [tf.keras.layers.Add()([inputs, inputs]) for _ in range(steps)]
    out = tf.keras.layers.Concatenate()(nodes) if steps > 1 else nodes[0]
    return tf.keras.Model(inputs, out, name=re.sub(r"[^A-Za-z0-9_]", "_", name))


def network_part_keys(spec: NetworkSpec) -> list[str]:
    """The keys `network_parts` builds, without building anything (the op keys and the
    parts of the cells; a fixed reduction has no preprocess or nodes)."""
    keys = {OVERHEAD, "stem", "classifier"}
    for place in op_places(spec.input_shape, spec.eval_config, spec.module_config, spec.steps):
        keys.update(op_key(p, place.channels, place.height, place.width, place.strides)
                    for p in spec.primitives if p != NONE_OP)
    cfg = get_module_config(spec.module_config)
    reductions = {spec.layers // 3, 2 * spec.layers // 3}
    for i in range(spec.layers):
        if i in reductions and not cfg.searched_reduction:
            keys.add(f"cell_{i}/fixed_reduction")
        else:
            keys.update({f"cell_{i}/preprocess0", f"cell_{i}/preprocess1", f"cell_{i}/nodes"})
    return sorted(keys)


def network_parts(spec: NetworkSpec) -> dict[str, Callable[[], Any]]:
    """Builders of one Keras model per part of the network of `spec` (keys as in the module
    docstring), each with BatchNorm made trained-like so that LCE converts it as it would
    a trained network."""
    cfg = get_module_config(spec.module_config)
    reference = _reference_network(spec)
    layers = {layer.name: layer for layer in reference.layers}

    def trained(build: Callable[[], Any]) -> Callable[[], Any]:
        def built():
            model = build()
            trained_like_batch_norm(model)
            return model
        return built

    def op_model(name, channels, height, width, strides):
        inputs = tf.keras.Input((height, width, channels))
        out = build_op(name, channels, strides, cfg, search=False)(inputs)
        return tf.keras.Model(inputs, out)

    def empty_model():
        inputs = tf.keras.Input((1, 1, 1))
        return tf.keras.Model(inputs, tf.keras.layers.Identity()(inputs))

    parts: dict[str, Callable[[], Any]] = {OVERHEAD: empty_model}
    stem = [layer for layer in reference.layers if layer.name.startswith("stem/")]
    parts["stem"] = trained(lambda: _single_input_model(spec.input_shape, stem, "stem"))
    head = [layers["global_pool"], layers["head/bn"], layers["logits"]]
    parts["classifier"] = trained(lambda: _single_input_model(
        head[0].input.shape[1:], head, "classifier"))
    for key in network_part_keys(spec):
        match = re.fullmatch(r"cell_(\d+)/(preprocess[01]|fixed_reduction)", key)
        if match:
            layer = layers[key]
            parts[key] = trained(lambda layer=layer, key=key: _single_input_model(
                layer.input.shape[1:], [layer], key))
        elif key.endswith("/nodes"):
            out = layers[key.replace("/nodes", "/out")]
            shape = out.output.shape[1:-1] + (out.output.shape[-1] // spec.steps,)
            parts[key] = lambda shape=shape, key=key: _nodes_model(shape, spec.steps, key)
    for place in op_places(spec.input_shape, spec.eval_config, cfg, spec.steps):
        for name in spec.primitives:
            if name == NONE_OP:
                continue
            args = (name, place.channels, place.height, place.width, place.strides)
            parts.setdefault(op_key(*args), trained(lambda args=args: op_model(*args)))
    return dict(sorted(parts.items()))


def trained_like_batch_norm(model: Any, seed: int = 0) -> None:
    """Gives every BatchNormalization non-default gamma/beta, as training would.

    Latency does not depend on weight values, but LCE's converter does: with the initial
    gamma = 1, beta = 0 it leaves some binary convs of an untrained network in float (22 of
    34 for the Fashion-MNIST network; 34 of 34 once gamma/beta are not the defaults).
    """
    rng = np.random.default_rng(seed)
    for _, layer in iter_layers(model):
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.1, layer.beta.shape).astype("float32"))


# -- timing ---------------------------------------------------------------------------------


def _invoker(flatbuffer: bytes, num_threads: int, use_indirect_bgemm: bool = True,
             use_xnnpack: bool = False) -> tuple[Callable[[], Any], tuple[int, ...]]:
    interpreter = lce_interpreter(flatbuffer, num_threads=num_threads,
                                  use_indirect_bgemm=use_indirect_bgemm, use_xnnpack=use_xnnpack)
    shape = tuple(interpreter.input_shapes[0])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    # The wrapped C++ interpreter runs one batch of inputs without Python-side re-batching.
    raw = getattr(interpreter, "interpreter", None)
    infer = (lambda: raw.predict([x])) if raw is not None else (lambda: interpreter.predict(x))
    return infer, shape


def _times_ms(infer: Callable[[], Any], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        infer()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure_latency(flatbuffer: bytes, num_threads: int = 1, use_indirect_bgemm: bool = True,
                    use_xnnpack: bool = False, warmup: int = 3, runs: int = 20) -> dict[str, Any]:
    """Times single-example (batch 1) inference of a .tflite flatbuffer on LCE's interpreter.

    The input is random normal data of the model's input shape (fixed to batch 1 by the
    converters). Returns wall-clock milliseconds per inference: mean_ms, median_ms, min_ms,
    max_ms, std_ms, plus the settings used.
    """
    infer, shape = _invoker(flatbuffer, num_threads, use_indirect_bgemm, use_xnnpack)
    _times_ms(infer, warmup)
    times = _times_ms(infer, runs)
    return {"mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
            "min_ms": min(times), "max_ms": max(times), "std_ms": statistics.pstdev(times),
            "runs": runs, "warmup": warmup, "num_threads": num_threads,
            "use_indirect_bgemm": use_indirect_bgemm, "use_xnnpack": use_xnnpack,
            "input_shape": list(shape)}


def measure_parts(flatbuffers: Mapping[str, bytes], num_threads: int = 1, rounds: int = 5,
                  runs: int = 20, warmup: int = 5, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Each flatbuffer's minimum over `rounds` shuffled rounds of `runs` batch-1 inferences,
    in ms (nothing subtracted; see the module docstring for why the minimum)."""
    rng = np.random.default_rng(seed)
    invokers = {}
    for key, flatbuffer in flatbuffers.items():
        invokers[key] = _invoker(flatbuffer, num_threads)[0]
        _times_ms(invokers[key], warmup)
    per_round: dict[str, list[float]] = {key: [] for key in invokers}
    keys = list(invokers)
    for r in range(rounds):
        for i in rng.permutation(len(keys)):
            per_round[keys[i]].append(min(_times_ms(invokers[keys[i]], runs)))
        if progress:
            progress(f"round {r + 1}/{rounds} timed {len(keys)} parts")
    return {key: min(values) for key, values in per_round.items()}


def convert_parts(spec: NetworkSpec, progress: Callable[[str], None] | None = None
                  ) -> dict[str, bytes]:
    """Every part of `spec`'s network converted by LCE (`network_parts`); raises
    ConversionError if a binary conv of a part did not become an ``LceBconv2d``."""
    out = {}
    parts = network_parts(spec)
    for n, (key, build) in enumerate(parts.items(), 1):
        model = build()
        out[key] = convert_model(model)
        check_binary_ops(model, out[key])
        if progress:
            progress(f"converted {n}/{len(parts)}: {key}")
    return out


def device_description() -> dict[str, Any]:
    """This machine: ``machine``, ``system``, ``processor`` (the CPU's model name where
    /proc/cpuinfo gives it) and ``cpus``."""
    processor = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    return {"machine": platform.machine(), "system": platform.system(),
            "processor": processor, "cpus": os.cpu_count()}


def lce_version() -> str:
    return version("larq-compute-engine")


def table_from_measurements(spec: NetworkSpec, measured_ms: Mapping[str, float],
                            device: Mapping[str, Any], runtime: Mapping[str, Any],
                            measurement: Mapping[str, Any]) -> LatencyTable:
    """A table from raw per-part times (the empty model's included, under ``overhead``):
    the overhead is subtracted from every part (at least 0)."""
    missing = sorted(set(network_part_keys(spec)) - set(measured_ms))
    if missing:
        raise LatencyTableError(f"no time for {len(missing)} part(s), e.g. {missing[:3]}.")
    overhead = float(measured_ms[OVERHEAD])
    entries = {k: max(0.0, float(v) - overhead) for k, v in measured_ms.items() if k != OVERHEAD}
    entries[OVERHEAD] = 0.0
    return LatencyTable(spec, entries, overhead, dict(device), dict(runtime), dict(measurement))


# -- phones: export the parts, import their times ------------------------------------------


def _part_file(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".tflite"


def export_parts(spec: NetworkSpec, flatbuffers: Mapping[str, bytes], directory: str) -> str:
    """Writes each part's flatbuffer to `directory` and a ``manifest.json`` naming, for every
    file, its part and input shape; returns the manifest's path."""
    os.makedirs(directory, exist_ok=True)
    parts = []
    for key, flatbuffer in sorted(flatbuffers.items()):
        atomic_write_bytes(os.path.join(directory, _part_file(key)), flatbuffer)
        parts.append({"key": key, "file": _part_file(key)})
    path = os.path.join(directory, "manifest.json")
    atomic_write_json(path, {"format": PARTS_FORMAT, "network": spec.to_dict(),
                             "lce_version": lce_version(), "parts": parts})
    return path


def table_from_timings(manifest_path: str, timings_path: str,
                       device: Mapping[str, Any], num_threads: int) -> LatencyTable:
    """A table from a phone's times of the exported parts.

    `timings_path` is a CSV with a header and the columns ``file`` (a file of the manifest)
    and ``ms`` (its average batch-1 inference time, e.g. ``lce_benchmark_model``'s
    ``Inference (avg)`` divided by 1000). Every file of the manifest needs a time. Raises
    LatencyTableError naming the file and line at fault.
    """
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as err:
        raise LatencyTableError(f"{manifest_path}: cannot read the parts manifest ({err}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PARTS_FORMAT:
        raise LatencyTableError(f"{manifest_path} is not a parts manifest (format "
                                f"{PARTS_FORMAT!r}; tools/latency_table.py --export_dir "
                                "writes one).")
    spec = NetworkSpec.from_dict(manifest.get("network") or {}, manifest_path)
    files = {p["file"]: p["key"] for p in manifest.get("parts", [])}
    times: dict[str, float] = {}
    try:
        with open(timings_path, newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "ms"} <= set(reader.fieldnames):
                raise LatencyTableError(f"{timings_path}: needs a header with the columns "
                                        f"`file` and `ms`, found {reader.fieldnames}.")
            for row in reader:
                line = reader.line_num  # the file's line: blank lines are skipped, not counted
                name = os.path.basename((row["file"] or "").strip())
                if name not in files:
                    raise LatencyTableError(f"{timings_path} line {line}: {name!r} is not a "
                                            f"file of {manifest_path}.")
                try:
                    ms = float(row["ms"])
                except (TypeError, ValueError):
                    ms = float("nan")
                if not np.isfinite(ms) or ms < 0:
                    raise LatencyTableError(f"{timings_path} line {line}: ms={row['ms']!r} is "
                                            "not a time in milliseconds (a number >= 0).")
                times[files[name]] = ms
    except OSError as err:
        raise LatencyTableError(f"{timings_path}: cannot read the timings ({err}).") from None
    untimed = sorted(f for f, k in files.items() if k not in times)
    if untimed:
        raise LatencyTableError(f"{timings_path} has no time for {len(untimed)} file(s) of "
                                f"{manifest_path}, e.g. {untimed[:3]}.")
    return table_from_measurements(
        spec, times, device,
        {"lce_version": manifest.get("lce_version"), "num_threads": num_threads},
        {"imported_from": os.path.abspath(timings_path), "statistic": "as given"})
