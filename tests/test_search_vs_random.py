"""benchmarks/search_vs_random.py: one searched genotype against random genotypes at its OPs
and a hand design, retrained into an evidence ledger by the evidence runner.

The pure parts (rejection sampling, hand designs, OPs, the report's arms) run in-process. The
script runs as a subprocess, by path, from another directory, on a tiny recipe: 400
Fashion-MNIST training and 200 test images copied into a temporary data_dir, 3 cells, one
binary epoch, 2 random genotypes. Meanwhile the bad command lines run (they fail before any
training). Then the same command again must retrain nothing.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tool_runs import (
    HAVE_FASHION,
    REPO,
    SMALL_GENOTYPE_OPS,
    ForkedRuns,
    Result,
    needs_fashion,
    subprocess_env,
    write_fashion_subset,
)

from ubnas_tf.errors import FlagError
from ubnas_tf.evidence import sampling
from ubnas_tf.evidence.ledger import genotype_hash
from ubnas_tf.evidence.report import arm_key, control_key, readme_section
from ubnas_tf.genotype import Genotype
from ubnas_tf.ops import DEFAULT_PRIMITIVES

SCRIPT = REPO / "benchmarks" / "search_vs_random.py"
TINY_GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["max_pool_3x3", 1], ["bconv_3x3", 1], ["skip_connect", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["bconv_3x3", 1], ["bconv_3x3", 0], ["max_pool_3x3", 2]],
    "reduce_concat": [2, 3],
}
# A 4-node genotype of the default search space (what the random draws are compared with).
SEARCHED_GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["max_pool_3x3", 1], ["bdil_conv_3x3", 1], ["skip_connect", 2],
               ["bconv_5x5", 2], ["avg_pool_3x3", 0], ["bconv_3x3", 3], ["skip_connect", 4]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["bconv_3x3", 1], ["bconv_3x3", 0], ["max_pool_3x3", 2],
               ["avg_pool_3x3", 3], ["bconv_3x3", 1], ["max_pool_3x3", 4], ["bconv_3x3", 2]],
    "reduce_concat": [2, 3, 4, 5],
}
N_TRAIN, N_TEST = 400, 200


def _recipe(data_dir: Path) -> str:
    return "\n".join([
        "# tiny recipe", "--dataset=fashion_mnist", f"--data_dir={data_dir}",
        "--validation_examples=40", "--layers=3", "--init_channels=32", "--stem_multiplier=1",
        "--stem_strides=4", "--batch_size=30", "--stage1_epochs=0", "--epochs=1",
        "--noaugment", "--verbose=2", ""])


# ------------------------------------------------------------------------------------------
# In-process: sampling, hand designs, OPs, the report's arms
# ------------------------------------------------------------------------------------------


def _fake_ops(genotype) -> float:
    """A stand-in for OPs: 1000 per binary conv edge plus 100."""
    return 100.0 + 1000.0 * sum(op == "bconv_3x3" for op, _ in genotype.normal + genotype.reduce)


def test_sampler_draws_distinct_genotypes_within_tolerance_reproducibly():
    searched = Genotype.from_dict(TINY_GENOTYPE, primitives=SMALL_GENOTYPE_OPS)
    target = _fake_ops(searched)  # 5 convs -> 5100
    found, stats = sampling.sample_random_genotypes(
        SMALL_GENOTYPE_OPS, 2, seed=0, wanted=4, target=target, tolerance=0.15, max_tries=10_000,
        predict=_fake_ops, exclude=(searched,))
    genotypes = [g for g, _, _ in found]
    assert len(genotypes) == 4 and len(set(genotypes)) == 4
    assert searched not in genotypes
    for g, predicted, measured in found:
        assert predicted == measured == _fake_ops(g)
        assert abs(measured - target) <= 0.15 * target
        assert g.ops_used() <= set(SMALL_GENOTYPE_OPS) and g.steps == 2
    assert stats.draws >= 4 and stats.accepted >= 4
    again, _ = sampling.sample_random_genotypes(
        SMALL_GENOTYPE_OPS, 2, seed=0, wanted=4, target=target, tolerance=0.15, max_tries=10_000,
        predict=_fake_ops, exclude=(searched,))
    assert [g for g, _, _ in again] == genotypes
    other, _ = sampling.sample_random_genotypes(
        SMALL_GENOTYPE_OPS, 2, seed=1, wanted=4, target=target, tolerance=0.15, max_tries=10_000,
        predict=_fake_ops)
    assert [g for g, _, _ in other] != genotypes


def test_sampler_measurement_decides_over_the_prediction():
    # The screen accepts everything; the measurement only genotypes without skip_connect.
    def measure(g):
        return 1.0 if "skip_connect" not in g.ops_used() else 100.0

    found, _ = sampling.sample_random_genotypes(SMALL_GENOTYPE_OPS, 2, seed=0, wanted=2, target=1.0,
                                                tolerance=0.1, max_tries=10_000,
                                                predict=lambda g: 1.0, measure=measure)
    assert len(found) == 2 and all("skip_connect" not in g.ops_used() for g, _, _ in found)


def test_sampler_gives_up_with_an_error_naming_the_flags_and_the_range():
    with pytest.raises(FlagError) as err:
        sampling.sample_random_genotypes(SMALL_GENOTYPE_OPS, 2, seed=0, wanted=3, target=1.0, tolerance=0.15,
                                         max_tries=200, predict=_fake_ops)
    message = str(err.value)
    assert "Found only 0 of --random=3" in message and "--ops_tolerance=0.15" in message
    assert "after 200 draws" in message
    assert re.search(r"the draws ranged over 0\.000[0-9]*-0\.0[0-9]+ MOPs", message)


# The tiny network of the subprocess run, for the in-process OPs checks.
TINY_NETWORK = {"dataset": "fashion_mnist", "layers": 3, "init_channels": 32,
                "stem_multiplier": 1, "stem_strides": 4, "module_config": "universal",
                "allow_unaligned_widths": False}


def test_cost_table_equals_the_measured_ops_of_sampled_and_hand_designed_genotypes():
    """The screen (`ubnas_tf.search.budget`'s cost table) gives exactly the OPs that
    model_cost measures on the built network: for random draws and for every hand design,
    including the res_* ones whose cells never read input 0 (no preprocess0 layer)."""
    searched = Genotype.from_dict(TINY_GENOTYPE, primitives=SMALL_GENOTYPE_OPS)
    predict = sampling.table_ops(TINY_NETWORK, SMALL_GENOTYPE_OPS, searched.steps)

    def measure(g):
        return sampling.eval_network_ops(g, TINY_NETWORK)

    target = measure(searched)
    assert math.isclose(predict(searched), target, rel_tol=1e-9)
    designs = sampling.hand_designs(SMALL_GENOTYPE_OPS, searched.steps, ["bconv_3x3"])
    assert set(designs) == {"all_bconv_3x3", "res_bconv_3x3", "pool_bconv_3x3"}
    for name, (g, _) in designs.items():
        assert math.isclose(predict(g), measure(g), rel_tol=1e-9), name
    found, stats = sampling.sample_random_genotypes(
        SMALL_GENOTYPE_OPS, searched.steps, seed=0, wanted=3, target=target, tolerance=0.15,
        max_tries=10_000, predict=predict, measure=measure, exclude=(searched,))
    # No draw passed the screen but failed on the network.
    assert len(found) == 3 and stats.accepted == 3
    for _, predicted, measured in found:
        assert math.isclose(predicted, measured, rel_tol=1e-9)
        assert abs(measured - target) <= 0.15 * target


@pytest.mark.parametrize("steps", [2, 4])
def test_hand_designs(steps):
    prims = [p for p in DEFAULT_PRIMITIVES if p != "none"]
    binary = ["bconv_3x3", "bconv_5x5", "bdil_conv_3x3", "bdil_conv_5x5"]
    designs = sampling.hand_designs(prims, steps, binary)
    assert set(designs) == {f"{kind}_{k}" for kind in ("all", "res", "pool") for k in binary}
    for name, (g, description) in designs.items():
        g.validate(prims)
        assert description
        assert g.steps == steps and g.normal == g.reduce
        assert g.normal_concat == tuple(range(2, steps + 2))
        k = name.split("_", 1)[1]
        for node in range(steps):
            pair = g.normal[2 * node: 2 * node + 2]
            if name.startswith("all_"):
                assert pair == ((k, node), (k, node + 1))
            elif name.startswith("res_"):
                assert pair == ((k, node + 1), ("skip_connect", node + 1))
            else:
                assert pair == (("max_pool_3x3", node), (k, node + 1))
    # Only designs whose ops are among the primitives.
    assert set(sampling.hand_designs(["bconv_3x3"], steps, ["bconv_3x3"])) == {"all_bconv_3x3"}
    assert sampling.hand_designs(["skip_connect", "max_pool_3x3"], steps, []) == {}


def test_short_genotype_names_each_node_by_op_codes():
    g = Genotype.from_dict(TINY_GENOTYPE, primitives=SMALL_GENOTYPE_OPS)
    assert sampling.short_genotype(g) == "N c3mp c3sk | R mpc3 c3mp"


def test_report_keeps_one_genotypes_comparison_apart_from_the_main_random_arm():
    rows = [{"arm": "searched", "variant": "", "genotype": f"s{i}", "recipe_hash": "r",
             "train_seed": 0, "test_accuracy": a, "mops": 1.5, "recipe": "x"}
            for i, a in enumerate([0.88, 0.87])]
    rows += [{"arm": "random", "variant": "", "genotype": f"r{i}", "recipe_hash": "r",
              "train_seed": 0, "test_accuracy": a, "mops": 1.5, "recipe": "x"}
             for i, a in enumerate([0.86, 0.85, 0.87])]
    rows += [{"arm": arm, "variant": "vs-abc", "genotype": f"v{i}", "recipe_hash": "r",
              "train_seed": 0, "test_accuracy": 0.5, "mops": 1.0, "recipe": "x"}
             for i, arm in enumerate(["searched", "random", "random"])]
    assert [arm_key(r) for r in rows[-3:]] == ["searched:vs-abc", "random:vs-abc",
                                               "random:vs-abc"]
    arms = {arm_key(r) for r in rows}
    assert control_key("searched:vs-abc", arms) == "random:vs-abc"
    assert control_key("searched:entropy", arms) == "random"
    assert control_key("searched", arms) == "random"
    section = readme_section(rows)
    # The main arms keep their own samples; the one-genotype comparison stays out.
    assert "vs-abc" not in section
    assert re.search(r"\| random \| 3 \| 86\.00 ± 1\.00 \|", section), section


# ------------------------------------------------------------------------------------------
# Subprocesses
# ------------------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: float = 300) -> Result:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd,
                          env=subprocess_env(repo_on_path=False), capture_output=True, text=True,
                          timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


# Bad command lines: each fails with a message naming the flag, before any training.
def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    genotype = tmp / "genotype.json"
    genotype.write_text(json.dumps(SEARCHED_GENOTYPE), encoding="utf-8")
    broken = tmp / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    not_a_ledger = tmp / "other.csv"
    not_a_ledger.write_text("a,b\n1,2\n", encoding="utf-8")
    a_file = tmp / "a_file"
    a_file.write_text("x", encoding="utf-8")
    g = f"--genotype={genotype}"
    w = f"--work_dir={tmp / 'work'}"
    led = f"--ledger={tmp / 'ledger.csv'}"
    return {
        "genotype-missing": ([w, led], [r"--genotype"]),
        "genotype-broken": ([w, led, f"--genotype={broken}"],
                            [r"error: --genotype=.*broken\.json is not a readable genotype"]),
        "random-1": ([w, led, g, "--random=1"], [r"--random=1 is invalid; it must be an integer >= 2"]),
        "metric": ([w, led, g, "--metric=median"], [r"--metric='median' is unknown; use one of"]),
        "recipe-missing": ([w, led, g, "--recipe=flags/nope.flags"],
                           [r"error: --recipe=flags/nope\.flags is not a flagfile"]),
        "work-dir-under-a-file": ([led, g, f"--work_dir={a_file / 'sub'}"], [r"--work_dir"]),
        "not-a-ledger": ([w, g, f"--ledger={not_a_ledger}"],
                         [r"error: .*other\.csv is not an evidence ledger"]),
    }


@dataclass
class Runs:
    root: Path
    args: list[str]
    first: Result | None  # None without Fashion-MNIST
    bad: dict[str, tuple[Result, list[str]]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """The tiny comparison in the background, the bad command lines meanwhile."""
    root = tmp_path_factory.mktemp("svr")
    args, proc, start = [], None, time.monotonic()
    if HAVE_FASHION:
        data = write_fashion_subset(root / "data", N_TRAIN, N_TEST)
        (root / "genotype.json").write_text(json.dumps(SEARCHED_GENOTYPE), encoding="utf-8")
        (root / "tiny_train.flags").write_text(_recipe(data), encoding="utf-8")
        args = [f"--genotype={root / 'genotype.json'}", f"--recipe={root / 'tiny_train.flags'}",
                f"--ledger={root / 'evidence' / 'ledger.csv'}", f"--work_dir={root / 'work'}",
                "--random=2"]
        # Output to files: a pipe could fill up while the bad cases run.
        stdout, stderr = open(root / "stdout", "w"), open(root / "stderr", "w")
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=root,
                                env=subprocess_env(repo_on_path=False), stdout=stdout,
                                stderr=stderr, text=True)
    bad_dir = root / "bad"
    bad_dir.mkdir()
    cases = _bad_cases(bad_dir)
    # Each in a process of its own, forked after one import of TensorFlow (the start-up the
    # seven would each repeat), from bad_dir as the other runs are.
    bad_runs = ForkedRuns(root / "bad_runs", {name: (SCRIPT, case_args)
                                              for name, (case_args, _) in cases.items()},
                          cwd=bad_dir, env=subprocess_env(repo_on_path=False), parallel=2)
    bad = {name: (bad_runs.result(name), cases[name][1]) for name in cases}
    first = None
    if proc is not None:
        try:
            proc.wait(timeout=900)
        finally:
            proc.kill()
            stdout.close()
            stderr.close()
        first = Result(proc.returncode, (root / "stdout").read_text(),
                       (root / "stderr").read_text(), time.monotonic() - start)
    return Runs(root, args, first, bad)


BAD_CASES = ["genotype-missing", "genotype-broken", "random-1", "metric", "recipe-missing",
             "work-dir-under-a-file", "not-a-ledger"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_flags_fail_naming_the_flag(runs, case):
    result, patterns = runs.bad[case]
    assert result.returncode == 2, str(result)
    for pattern in patterns:
        assert re.search(pattern, result.output), f"{pattern!r} not in\n{result}"
    assert "Traceback" not in result.output, str(result)
    assert not (runs.root / "bad" / "ledger.csv").exists()
    assert not (runs.root / "bad" / "work" / "train").exists()


def _ledger(runs: Runs) -> list[dict]:
    with open(runs.root / "evidence" / "ledger.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@needs_fashion
def test_rows_in_the_ledger_and_the_verdict(runs):
    first = runs.first
    assert first is not None and first.returncode == 0, str(first)
    rows = _ledger(runs)
    searched = Genotype.from_dict(SEARCHED_GENOTYPE)
    variant = f"vs-{genotype_hash(searched)}"
    assert [r["arm"] for r in rows] == ["searched", "random", "random", "hand"]
    assert {r["variant"] for r in rows} == {variant}
    assert rows[0]["genotype"] == genotype_hash(searched)
    assert rows[0]["origin"] == f"genotype {runs.root / 'genotype.json'}"
    assert len({r["genotype"] for r in rows}) == 4
    assert rows[3]["origin"].startswith("hand design ")
    target = float(rows[0]["mops"])
    for r in rows[1:3]:
        assert abs(float(r["mops"]) - target) <= 0.15 * target
        assert re.fullmatch(r"draw [01] of seed 0 within 15% of [0-9.]+ MOPs", r["origin"])
    for r in rows:
        genotype = Genotype.load(runs.root / "evidence" / "genotypes" / f"{r['genotype']}.json")
        assert genotype_hash(genotype) == r["genotype"]
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert r["train_seed"] == "0" and r["recipe"].endswith("tiny_train.flags")
        # Each row is a finished tools/train.py run directory with the one recipe.
        run = runs.root / "work" / "train" / f"{r['genotype']}_{r['recipe_hash']}_s0"
        summary = json.loads((run / "summary.json").read_text())
        # The ledger keeps 6 decimals below 1 and 6 significant digits above.
        assert math.isclose(summary["best_model_test_accuracy"], float(r["test_accuracy"]),
                            abs_tol=5e-7)
        assert math.isclose(summary["cost"]["ops"] / 1e6, float(r["mops"]), rel_tol=5e-6,
                            abs_tol=5e-7)

    out = first.stdout
    assert re.search(r"^arm\s+genotype\s+ops \(normal \| reduce\)\s+MOPs\s+acc %$", out, re.M)
    accs = [float(r["test_accuracy"]) for r in rows]
    mean, std = np.mean(accs[1:3]), np.std(accs[1:3], ddof=1)
    assert (f"against 2 random genotypes {mean * 100:.2f} ± {std * 100:.2f} %" in out), out
    assert f"searched - hand design = {(accs[0] - accs[3]) * 100:+.2f} points." in out
    assert re.search(r"^VERDICT: the searched genotype (beats|does not beat) chance", out, re.M)


@needs_fashion
def test_rerun_retrains_nothing(runs):
    assert runs.first is not None and runs.first.returncode == 0, str(runs.first)
    before = (runs.root / "evidence" / "ledger.csv").read_bytes()
    summaries = sorted((runs.root / "work" / "train").glob("*/summary.json"))
    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    rerun = _run(runs.args, runs.root)
    assert rerun.returncode == 0, str(rerun)
    assert "4 of 4 trials are in" in rerun.stdout
    assert "loss:" not in rerun.stdout and "##### trial" not in rerun.stdout
    assert (runs.root / "evidence" / "ledger.csv").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps
    assert "VERDICT" in rerun.stdout
