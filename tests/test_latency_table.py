"""Latency tables (issue #26): the table file, the expected latency the search charges, the
search's refusals of a latency budget it cannot meet or check, a phone's timings imported
through the exported parts, and one real (tiny) measurement on LCE.

The tool runs (one real measurement with --export_dir, which takes a minute or two, and the
quick refusals) are started together by the first test that needs them (`runs`) and go on in
the background; those tests come first, so the in-process tests run meanwhile. The hand-made
tables are `table_from_measurements` of made-up, distinct times for every part.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from tool_runs import (
    FASHION_SKIP_REASON,
    HAVE_FASHION,
    SMALL_PRIMITIVES,
    Proc,
    Result,
    run_tool,
)

from ubnas_tf.deploy.latency import (
    PARTS_FORMAT,
    TABLE_FORMAT,
    LatencyTable,
    NetworkSpec,
    export_parts,
    lce_version,
    load_latency_table,
    network_part_keys,
    op_key,
    table_from_measurements,
    table_from_timings,
)
from ubnas_tf.errors import LatencyTableError
from ubnas_tf.flags import _budget_flags
from ubnas_tf.genotype import Genotype, edge_index, num_edges, random_genotype
from ubnas_tf.nets.eval_network import op_places
from ubnas_tf.search.budget import latency_cost_table

# The network of TINY_FLAGS (a tools/train.py flagfile) on Fashion-MNIST: 3 cells at 7x7, 4x4
# and 2x2 after a stride-4 stem.
TINY_FLAGS = ("--dataset=fashion_mnist\n--layers=3\n--init_channels=32\n--stem_multiplier=1\n"
              "--stem_strides=4\n")
TINY = NetworkSpec((28, 28, 1), 10, 3, 32, 1, 4, "universal", SMALL_PRIMITIVES)
# The real measurement: fewer ops, fewer parts to convert (22).
MEASURED = NetworkSpec((28, 28, 1), 10, 3, 32, 1, 4, "universal",
                       ("none", "skip_connect", "bconv_3x3"))
OVERHEAD_MS = 0.05


def made_up_table(spec: NetworkSpec, seed: int = 0) -> LatencyTable:
    """A table of distinct times for every part of `spec` (the empty model's: OVERHEAD_MS)."""
    keys = [k for k in network_part_keys(spec) if k != "overhead"]
    times = 0.001 * (1 + np.random.default_rng(seed).permutation(len(keys)))
    measured = {k: OVERHEAD_MS + float(t) for k, t in zip(keys, times, strict=True)}
    measured["overhead"] = OVERHEAD_MS
    return table_from_measurements(spec, measured, {"machine": "test", "cpus": 2},
                                   {"lce_version": "0.0", "num_threads": 1},
                                   {"rounds": 1, "load_average_before": [0.5, 0.25, 0.0]})


# ------------------------------------------------------------------------------------------
# The tool runs, started together in the background
# ------------------------------------------------------------------------------------------

SEARCH = ("--output_dir={out}/run", "--primitives=" + ",".join(SMALL_PRIMITIVES), "--max_examples=200",
          "--batch_size=16")
SEARCH_ERR = r"search\.py: error: "
LATENCY_ERR = r"latency_table\.py: error: "

# id -> (tool, args, patterns of its one-line error on stderr). {name} is a path of
# `Runs.paths` or {out}, the case's own (empty) directory; in the patterns they are escaped,
# and {low} / {high} are the hand-made table's cost range in ms. (The other combinations of
# budget flags are checked in-process, test_budget_flag_combinations_...)
REFUSALS = {
    "latency-import-without-device": (
        "latency_table", ("--import_timings={not_a_table}", "--manifest={not_a_table}",
                          "--output={out}/table.json"),
        (LATENCY_ERR + r"--import_timings needs --device\.$",)),
    "latency-output-exists": (
        "latency_table", ("--train_flagfile={tiny}", "--output={table}"),
        (LATENCY_ERR + r"--output={table} exists; pass --overwrite to replace it\.$",)),
    "search-latency-target-out-of-range": (
        "search", ("--target_latency_ms=0.0001", "--latency_table={table}",
                   "--target_train_flagfile={tiny}", *SEARCH),
        (SEARCH_ERR + r"--target_latency_ms=0\.0001 is outside what the network of {tiny} can "
         r"cost with these primitives: {low} to {high} ms\.$",)),
    "search-latency-target-without-table": (
        "search", ("--target_latency_ms=0.5", "--target_train_flagfile={tiny}", *SEARCH),
        (SEARCH_ERR + r"--target_latency_ms and --latency_table go together",)),
    "search-table-of-another-network": (
        "search", ("--target_latency_ms=0.5", "--latency_table={table}",
                   "--target_train_flagfile={wide}", *SEARCH),
        (SEARCH_ERR + r"--latency_table={table} was measured for another network than "
         r"--target_train_flagfile={wide} on --dataset=fashion_mnist: init_channels 32 "
         r"\(table\) vs 64\. Measure one with tools/latency_table\.py "
         r"--train_flagfile={wide}\.$",)),
    "search-table-not-a-table": (
        "search", ("--target_latency_ms=0.5", "--latency_table={not_a_table}",
                   "--target_train_flagfile={tiny}", *SEARCH),
        (SEARCH_ERR + r"--latency_table: {not_a_table} is not a latency table: its format is "
         r"'ubnas-latency-table/0', not 'ubnas-latency-table/1'",)),
}


def _measure_args(paths: dict[str, str]) -> list[str]:
    return [f"--train_flagfile={paths['tiny']}", "--primitives=none,skip_connect,bconv_3x3",
            "--rounds=2", "--runs=3", "--warmup=1", f"--export_dir={paths['export']}",
            f"--output={paths['measured']}"]


class Runs:
    """The files the runs read (`paths`), the measurement (`measured()`) and the refusals
    (`refusal(id)`)."""

    def __init__(self, base: Path):
        self.base = base
        self.paths = {name: str(base / name) for name in (
            "tiny", "wide", "table", "not_a_table", "export", "measured")}
        (base / "tiny").write_text(TINY_FLAGS)
        (base / "wide").write_text(TINY_FLAGS.replace("init_channels=32", "init_channels=64"))
        made_up_table(TINY).save(self.paths["table"])
        data = json.loads((base / "table").read_text())
        (base / "not_a_table").write_text(json.dumps({**data, "format": "ubnas-latency-table/0"}))
        self._measurement = Proc("latency_table", _measure_args(self.paths), base / "measure.log")
        self._measured: Result | None = None
        self.pool = ThreadPoolExecutor(2)
        self.futures = {}
        for case_id, (tool, args, _) in REFUSALS.items():
            if tool == "search" and not HAVE_FASHION:
                continue
            out = base / case_id
            out.mkdir()
            self.futures[case_id] = self.pool.submit(
                run_tool, tool, [_fill(a, {**self.paths, "out": str(out)}) for a in args])

    def refusal(self, case_id: str) -> Result:
        return self.futures[case_id].result()

    def measured(self) -> Result:
        if self._measured is None:
            self._measured = self._measurement.wait(timeout=600)
        return self._measured

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._measurement.proc.poll() is None:  # a test failed before waiting for it
            self._measurement.proc.kill()
        self._measurement.wait(timeout=60)


def _fill(text: str, paths: dict[str, str], escape: bool = False) -> str:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", re.escape(value) if escape else value)
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runner = Runs(tmp_path_factory.mktemp("latency_runs"))
    yield runner
    runner.close()


@pytest.mark.parametrize("case_id", [
    pytest.param(case_id, marks=[pytest.mark.skipif(tool == "search" and not HAVE_FASHION,
                                                    reason=FASHION_SKIP_REASON)])
    for case_id, (tool, _, _) in REFUSALS.items()])
def test_bad_latency_budget_or_table_is_refused_in_one_line(runs, case_id):
    tool, _, patterns = REFUSALS[case_id]
    res = runs.refusal(case_id)
    assert res.returncode == 2, str(res)
    low, high = latency_cost_table(made_up_table(TINY)).cost_range()
    values = {**runs.paths, "out": str(runs.base / case_id), "low": f"{low:.3f}",
              "high": f"{high:.3f}"}
    lines = res.stderr.splitlines()
    for pattern in patterns:
        regex = _fill(pattern, values, escape=True)
        assert any(re.search(regex, line) for line in lines), f"missing /{regex}/ in:\n{res}"
    assert "Traceback" not in res.output, str(res)
    # Refused before the run directory is prepared, so before any data is read or model built.
    assert os.listdir(runs.base / case_id) == [], str(res)


@pytest.mark.parametrize("given, message", [
    ({"target_mops": 1.5, "target_latency_ms": 0.5, "latency_table": "t.json"},
     "--target_mops and --target_latency_ms are two budgets; give one of them."),
    ({"latency_table": "t.json"}, "--target_latency_ms and --latency_table go together"),
    ({"target_latency_ms": 0.5, "latency_table": "t.json", "target_train_flagfile": None},
     "--target_latency_ms needs --target_train_flagfile"),
], ids=["two-budgets", "table-without-target", "target-without-network"])
def test_budget_flag_combinations_are_refused_naming_the_flags(given, message):
    """What tools/search.py's parser checks (it prints the message as search-latency-target-
    without-table above shows)."""
    values = {"target_mops": None, "target_latency_ms": None, "latency_table": None,
              "target_train_flagfile": "tiny.flags", **given}
    with pytest.raises(flags.ValidationError, match=re.escape(message)):
        _budget_flags(values)
    assert _budget_flags({**values, "target_mops": None, "target_latency_ms": 0.5,
                          "latency_table": "t.json", "target_train_flagfile": "tiny.flags"})


# ------------------------------------------------------------------------------------------
# The table file
# ------------------------------------------------------------------------------------------


def test_table_round_trips_through_its_file(tmp_path):
    table = made_up_table(TINY)
    assert table.overhead_ms == OVERHEAD_MS and table.entries["overhead"] == 0.0
    assert sorted(table.entries) == network_part_keys(TINY)
    path = tmp_path / "table.json"
    table.save(str(path))
    assert json.loads(path.read_text())["format"] == TABLE_FORMAT
    loaded = load_latency_table(str(path))
    assert loaded.entries == table.entries
    assert loaded.network == TINY
    assert (loaded.device, loaded.runtime, loaded.measurement) == (
        table.device, table.runtime, table.measurement)
    assert loaded == table


def test_table_from_measurements_subtracts_the_empty_model_at_least_to_zero():
    keys = network_part_keys(TINY)
    measured = {k: 0.2 for k in keys} | {"overhead": 0.05, "stem": 0.03}
    table = table_from_measurements(TINY, measured, {}, {}, {})
    assert table.overhead_ms == 0.05
    assert table.entries["stem"] == 0.0
    assert table.entries["classifier"] == pytest.approx(0.15)
    del measured["cell_1/nodes"]
    with pytest.raises(LatencyTableError,
                       match=r"no time for 1 part\(s\), e\.g\. \['cell_1/nodes'\]"):
        table_from_measurements(TINY, measured, {}, {}, {})


def _spoil_format(d):
    d["format"] = "ubnas-latency-table/0"


def _negative(d):
    d["entries"]["stem"] = -0.001


def _nan(d):
    d["entries"]["op/bconv_3x3/c64/4x4/s1"] = math.nan  # json writes it as NaN


def _missing_part(d):
    del d["entries"]["cell_2/preprocess1"]


def _negative_overhead(d):
    d["overhead_ms"] = -1


def _incomplete_network(d):
    del d["network"]["init_channels"]


@pytest.mark.parametrize("spoil, message", [
    (_spoil_format, r" is not a latency table: its format is 'ubnas-latency-table/0', not "
                    r"'ubnas-latency-table/1' \(write one with tools/latency_table\.py\)"),
    (_negative, r": latencies must be finite numbers >= 0 \(ms\); not so for \['stem'\]"),
    (_nan, r": latencies must be finite numbers >= 0 \(ms\); not so for "
           r"\['op/bconv_3x3/c64/4x4/s1'\]"),
    (_missing_part, r" lacks 1 part\(s\) of its own network, e\.g\. \['cell_2/preprocess1'\]; "
                    r"measure it again"),
    (_negative_overhead, r": latencies must be finite numbers >= 0 \(ms\); not so for "
                         r"\['overhead_ms'\]"),
    (_incomplete_network, r": its `network` entry is incomplete or malformed \(KeyError"),
], ids=["format", "negative", "nan", "missing-part", "negative-overhead", "network"])
def test_a_spoilt_table_file_is_refused_naming_it(tmp_path, spoil, message):
    path = tmp_path / "spoilt.json"
    made_up_table(TINY).save(str(path))
    data = json.loads(path.read_text())
    spoil(data)
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match=re.escape(str(path)) + message):
        load_latency_table(str(path))


def test_a_missing_or_non_json_table_is_refused_naming_it(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(LatencyTableError, match=re.escape(str(missing)) + " is not a file"):
        load_latency_table(str(missing))
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"format": ')
    with pytest.raises(LatencyTableError, match=re.escape(str(garbage)) + " is not JSON"):
        load_latency_table(str(garbage))


def test_a_table_covers_its_network_and_any_of_its_primitives():
    assert TINY.mismatch(TINY) is None
    assert TINY.mismatch(dataclasses.replace(TINY, primitives=("none", "bconv_3x3"))) is None
    wide = dataclasses.replace(TINY, init_channels=64, input_shape=(32, 32, 3))
    assert TINY.mismatch(wide) == ("input_shape [28, 28, 1] (table) vs [32, 32, 3]; "
                                   "init_channels 32 (table) vs 64")
    more = dataclasses.replace(TINY, primitives=("none", "bconv_3x3", "bconv_5x5"))
    assert TINY.mismatch(more) == "primitives ['bconv_5x5'] not in the table"


# ------------------------------------------------------------------------------------------
# The expected latency of an architecture
# ------------------------------------------------------------------------------------------

# TINY, and networks with several cells of a type (layers=5: normal cells 0, 2, 4) and with
# fixed reduction blocks (cells 1 and 2), whose reduce cell is not charged.
SPECS = {
    "tiny": TINY,
    "five-cells": NetworkSpec((28, 28, 1), 10, 5, 32, 2, 2, "universal", SMALL_PRIMITIVES),
    "fixed-reduction": NetworkSpec((8, 8, 1), 10, 4, 32, 1, 1, "universal_real_reduction", SMALL_PRIMITIVES),
}


def _sum_of_parts(table: LatencyTable, genotype: Genotype) -> float:
    """The table's time of `genotype`'s network, part by part: the empty model, stem and
    classifier, and every cell's preprocessing, nodes and the op of each edge at its place
    (or the cell's fixed reduction block)."""
    spec, e = table.network, table.entries
    places = {(p.cell, p.edge): p for p in op_places(
        spec.input_shape, spec.eval_config, spec.module_config, spec.steps)}
    total = table.overhead_ms + e["stem"] + e["classifier"]
    for i in range(spec.layers):
        if f"cell_{i}/fixed_reduction" in e:
            total += e[f"cell_{i}/fixed_reduction"]
            continue
        total += e[f"cell_{i}/preprocess0"] + e[f"cell_{i}/preprocess1"] + e[f"cell_{i}/nodes"]
        reduction = i in (spec.layers // 3, 2 * spec.layers // 3)
        for k, (op, source) in enumerate(genotype.reduce if reduction else genotype.normal):
            place = places[(i, edge_index(k // 2, source))]
            total += e[op_key(op, place.channels, place.height, place.width, place.strides)]
    return total


def _one_hot_logits(edges, high: float = 30.0):
    """alpha / beta logits: `high` on each kept edge and its op, 0 everywhere else."""
    alpha = np.zeros((num_edges(4), len(SMALL_PRIMITIVES)), np.float32)
    beta = np.zeros(num_edges(4), np.float32)
    for k, (op, j) in enumerate(edges):
        alpha[edge_index(k // 2, j), SMALL_PRIMITIVES.index(op)] = high
        beta[edge_index(k // 2, j)] = high
    return alpha, beta


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("seed", range(2))
def test_expected_latency_of_a_one_hot_architecture_is_the_sum_of_its_parts(name, seed):
    table = made_up_table(SPECS[name], seed)
    costs = latency_cost_table(table)
    assert (costs.unit, costs.key, costs.primitives) == ("ms", "latency_ms", SMALL_PRIMITIVES)
    fixed = [v for k, v in table.entries.items() if not k.startswith("op/")]
    assert costs.base == pytest.approx(table.overhead_ms + sum(fixed), rel=1e-12)
    rng = np.random.default_rng(seed)
    genotype = random_genotype(SMALL_PRIMITIVES, 4, rng)
    by_hand = _sum_of_parts(table, genotype)
    assert costs.genotype_cost(genotype) == pytest.approx(by_hand, rel=1e-12)
    a_n, b_n = _one_hot_logits(genotype.normal)
    a_r, b_r = _one_hot_logits(genotype.reduce)
    assert float(costs.expected(a_n, b_n, a_r, b_r)) == pytest.approx(by_hand, rel=1e-4)
    low, high = costs.cost_range()
    assert low <= by_hand <= high
    if name == "fixed-reduction":  # the reduce cell is a fixed block: its logits cost nothing
        assert not costs.searched_reduction and not costs.reduce.any()
        other = rng.normal(size=a_r.shape).astype(np.float32)
        assert float(costs.expected(a_n, b_n, other, b_r)) == pytest.approx(by_hand, rel=1e-4)


@pytest.mark.parametrize("name", SPECS)
def test_cost_range_is_the_cheapest_and_dearest_derivable_network(name):
    table = made_up_table(SPECS[name], seed=3)
    costs = latency_cost_table(table)
    usable = [o for o, p in enumerate(SMALL_PRIMITIVES) if p != "none"]
    extremes = []
    for pick in (min, max):
        cells = []
        for matrix in (costs.normal, costs.reduce):
            edges = []
            for node in range(4):
                pairs = itertools.combinations(range(node + 2), 2)
                best = pick(pairs, key=lambda js: sum(pick(matrix[edge_index(node, j), usable])
                                                      for j in js))
                for j in best:
                    o = pick(usable, key=lambda o: matrix[edge_index(node, j), o])
                    edges.append((SMALL_PRIMITIVES[o], j))
            cells.append(tuple(edges))
        genotype = Genotype(cells[0], (2, 3, 4, 5), cells[1], (2, 3, 4, 5))
        extremes.append(costs.genotype_cost(genotype))
        assert costs.genotype_cost(genotype) == pytest.approx(_sum_of_parts(table, genotype))
    assert costs.cost_range() == pytest.approx(tuple(extremes), rel=1e-12)


def test_cost_table_needs_the_search_primitives_in_the_table():
    table = made_up_table(TINY)
    subset = latency_cost_table(table, ("none", "bconv_3x3", "skip_connect"))
    assert subset.primitives == ("none", "bconv_3x3", "skip_connect")
    full = latency_cost_table(table)
    assert np.array_equal(subset.normal[:, 1], full.normal[:, SMALL_PRIMITIVES.index("bconv_3x3")])
    with pytest.raises(LatencyTableError, match=r"no times for the primitives \['bconv_5x5'\]"):
        latency_cost_table(table, ("none", "bconv_5x5"))


# ------------------------------------------------------------------------------------------
# A real measurement, and the parts exported for a phone
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(runs) -> tuple[Result, dict[str, str]]:
    res = runs.measured()
    assert res.returncode == 0, str(res)
    return res, runs.paths


def test_measured_table_times_every_part_and_binary_ops_cost_more(measured):
    res, paths = measured
    table = load_latency_table(paths["measured"])
    assert table.network == MEASURED
    assert sorted(table.entries) == network_part_keys(MEASURED)
    assert all(ms >= 0 for ms in table.entries.values()) and table.overhead_ms > 0
    binary = [k for k in table.entries if k.startswith("op/bconv_3x3/")]
    assert len(binary) == 5  # cell 0 at 7x7; the reductions' inputs (s2) and nodes (s1)
    for key in binary:
        skip = key.replace("bconv_3x3", "skip_connect")
        assert table.entries[key] > table.entries[skip], (key, table.entries)
    assert {k: table.measurement[k] for k in ("rounds", "runs", "warmup", "batch")} == {
        "rounds": 2, "runs": 3, "warmup": 1, "batch": 1}
    assert table.runtime["lce_version"] == lce_version() and table.runtime["num_threads"] == 1
    assert table.device["cpus"] == os.cpu_count()
    low, high = latency_cost_table(table).cost_range()
    assert f"Derivable networks: {low:.3f} to {high:.3f} ms" in res.stdout, str(res)
    assert f"wrote {paths['measured']}" in res.stdout


def test_exported_parts_are_lce_flatbuffers_with_a_manifest(measured, tmp_path):
    _, paths = measured
    manifest = json.loads((Path(paths["export"]) / "manifest.json").read_text())
    assert manifest["format"] == PARTS_FORMAT and manifest["lce_version"] == lce_version()
    assert NetworkSpec.from_dict(manifest["network"]) == MEASURED
    assert [p["key"] for p in manifest["parts"]] == network_part_keys(MEASURED)
    flatbuffers = {}
    for part in manifest["parts"]:
        data = (Path(paths["export"]) / part["file"]).read_bytes()
        assert data[4:8] == b"TFL3", part  # a TFLite flatbuffer
        # Every binary conv became LCE's (convert_parts checks it; the file says so too): the
        # binary ops' and the cells' (binary) preprocessing.
        binary = part["key"].startswith("op/bconv_3x3/") or "/preprocess" in part["key"]
        assert (b"LceBconv2d" in data) == binary, part
        flatbuffers[part["key"]] = data
    assert sorted(os.listdir(paths["export"])) == sorted(
        ["manifest.json", *(p["file"] for p in manifest["parts"])])
    # export_parts itself: the same files and manifest from the same flatbuffers.
    again = export_parts(MEASURED, flatbuffers, str(tmp_path / "again"))
    assert json.loads(Path(again).read_text()) == manifest
    for part in manifest["parts"]:
        assert (tmp_path / "again" / part["file"]).read_bytes() == flatbuffers[part["key"]]


def _phone_times(manifest_path: str) -> dict[str, float]:
    """Made-up phone times (ms) by file: the empty model 0.05, the nodes of cell 0 below it."""
    parts = json.loads(Path(manifest_path).read_text())["parts"]
    times = {p["file"]: round(0.06 + 0.01 * i, 4) for i, p in enumerate(parts)}
    by_key = {p["key"]: p["file"] for p in parts}
    times[by_key["overhead"]] = OVERHEAD_MS
    times[by_key["cell_0/nodes"]] = 0.03
    return times


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "ms"])
        writer.writerows(rows)


def test_phone_timings_become_a_table(measured, tmp_path):
    _, paths = measured
    manifest = str(Path(paths["export"]) / "manifest.json")
    times = _phone_times(manifest)
    timings = tmp_path / "times.csv"
    # As lce_benchmark_model's graph paths on the phone: only the file name counts.
    _write_csv(timings, [(f"/data/local/tmp/parts/{f}", str(ms)) for f, ms in times.items()])
    table = table_from_timings(manifest, str(timings), {"description": "Pixel 6"}, 4)
    keys = {p["file"]: p["key"] for p in json.loads(Path(manifest).read_text())["parts"]}
    assert table.network == MEASURED and table.overhead_ms == OVERHEAD_MS
    assert table.entries == pytest.approx(
        {keys[f]: max(0.0, ms - OVERHEAD_MS) for f, ms in times.items()}, abs=1e-12)
    assert table.entries["cell_0/nodes"] == 0.0
    assert table.device == {"description": "Pixel 6"}
    assert table.runtime == {"lce_version": lce_version(), "num_threads": 4}
    assert table.measurement["imported_from"] == str(timings)


@pytest.mark.parametrize("edit, message", [
    ("drop", r"{csv} has no time for 1 file\(s\) of {manifest}, e\.g\. \['stem\.tflite'\]\."),
    ("unknown", r"{csv} line 4: 'bogus\.tflite' is not a file of {manifest}\."),
    ("abc", r"{csv} line 4: ms='abc' is not a time in milliseconds \(a number >= 0\)\."),
    ("negative", r"{csv} line 4: ms='-0\.2' is not a time in milliseconds"),
    ("header", r"{csv}: needs a header with the columns `file` and `ms`, found "
               r"\['file', 'time'\]\."),
])
def test_bad_phone_timings_are_refused_naming_the_line(measured, tmp_path, edit, message):
    _, paths = measured
    manifest = str(Path(paths["export"]) / "manifest.json")
    times = _phone_times(manifest)
    rows = [(f, str(ms)) for f, ms in times.items() if not (edit == "drop" and f == "stem.tflite")]
    if edit in ("unknown", "abc", "negative"):  # the data's 3rd row, the file's 4th line
        rows[2] = {"unknown": ("bogus.tflite", "0.1"), "abc": (rows[2][0], "abc"),
                   "negative": (rows[2][0], "-0.2")}[edit]
    timings = tmp_path / "times.csv"
    _write_csv(timings, rows)
    if edit == "header":
        timings.write_text(timings.read_text().replace("file,ms", "file,time", 1))
    regex = _fill(message, {"csv": str(timings), "manifest": manifest}, escape=True)
    with pytest.raises(LatencyTableError, match=regex):
        table_from_timings(manifest, str(timings), {"description": "Pixel 6"}, 1)


def test_line_numbers_count_blank_lines(measured, tmp_path):
    _, paths = measured
    manifest = str(Path(paths["export"]) / "manifest.json")
    timings = tmp_path / "times.csv"
    timings.write_text("file,ms\nstem.tflite,0.1\n\nclassifier.tflite,x\n")
    with pytest.raises(LatencyTableError, match=re.escape(f"{timings} line 4: ms='x'")):
        table_from_timings(manifest, str(timings), {"description": "Pixel 6"}, 1)


def test_latency_table_tool_imports_phone_timings(measured, tmp_path):
    _, paths = measured
    manifest = str(Path(paths["export"]) / "manifest.json")
    times = _phone_times(manifest)
    timings = tmp_path / "times.csv"
    _write_csv(timings, [(f, str(ms)) for f, ms in times.items()])
    output = tmp_path / "pixel6.json"
    res = run_tool("latency_table", [f"--manifest={manifest}", f"--import_timings={timings}",
                                     "--device=Pixel 6, 1 thread", "--num_threads=1",
                                     f"--output={output}"])
    assert res.returncode == 0, str(res)
    table = load_latency_table(str(output))
    expected = table_from_timings(manifest, str(timings), {"description": "Pixel 6, 1 thread"}, 1)
    assert table == expected
    assert table.device == {"description": "Pixel 6, 1 thread"}
    assert table.measurement == {"imported_from": str(timings), "statistic": "as given"}
    assert f"overhead per inference {OVERHEAD_MS:.4f} ms" in res.stdout, str(res)
    assert f"wrote {output}" in res.stdout
