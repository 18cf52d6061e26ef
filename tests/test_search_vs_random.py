"""benchmarks/search_vs_random.py: searched vs random vs hand-designed genotypes at equal OPs.

The pure parts (rejection sampling, hand designs, the comparison, the setting checks, flagfile
reading) run in-process. The script itself runs as a subprocess, by path, from another
directory, on a tiny configuration: 400 Fashion-MNIST training and 200 test images copied
into a temporary data_dir, a 2-node genotype, 3 primitives, 3 cells, 2 random genotypes and a
single binary epoch (no stage 1: two stages would double the ~15 s that each of the four
trainings spends mostly tracing). Meanwhile the bad command lines run (they fail in absl's
validators or the first checks, before TensorFlow is imported). Then the same command again
must skip every training, and one with another --epochs must be refused.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tool_runs import Result, subprocess_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "search_vs_random.py"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_FASHION = all((FASHION_DIR / f"{b}.gz").is_file() or (FASHION_DIR / b).is_file()
                   for b in FASHION_FILES)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST IDX files not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")

PRIMS = ["skip_connect", "max_pool_3x3", "bconv_3x3"]
TINY_GENOTYPE = {
    "format": "ubnas-genotype/1",
    "normal": [["bconv_3x3", 0], ["max_pool_3x3", 1], ["bconv_3x3", 1], ["skip_connect", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["bconv_3x3", 1], ["bconv_3x3", 0], ["max_pool_3x3", 2]],
    "reduce_concat": [2, 3],
}
# The network comes from --train_flagfile (its schedule and output_dir must be ignored); the
# schedule from the command line.
TRAIN_FLAGFILE = """# tiny recipe
--dataset=fashion_mnist
--output_dir=runs/must_not_be_used
--layers=3
--init_channels=32
--stem_multiplier=1
--stem_strides=4
--batch_size=30
--epochs=99
--noaugment
--label_smoothing=0.05
"""
N_TRAIN, N_TEST = 400, 200


from ubnas_tf.experiments import search_vs_random as svr  # noqa: E402

# ------------------------------------------------------------------------------------------
# In-process: sampling, hand designs, comparison, flagfile
# ------------------------------------------------------------------------------------------


def _fake_ops(genotype) -> float:
    """A stand-in for OPs: 1000 per binary conv edge plus 100."""
    return 100.0 + 1000.0 * sum(op == "bconv_3x3" for op, _ in genotype.normal + genotype.reduce)


def test_sampler_draws_distinct_genotypes_within_tolerance_reproducibly():
    from ubnas_tf.genotype import Genotype

    searched = Genotype.from_dict(TINY_GENOTYPE, primitives=PRIMS)
    target = _fake_ops(searched)  # 5 convs -> 5100
    found, stats = svr.sample_random_genotypes(PRIMS, 2, seed=0, wanted=4, target=target,
                                               tolerance=0.15, max_tries=10_000,
                                               predict=_fake_ops, exclude=(searched,))
    genotypes = [g for g, _, _ in found]
    assert len(genotypes) == 4 and len(set(genotypes)) == 4
    assert searched not in genotypes
    for g, predicted, measured in found:
        assert predicted == measured == _fake_ops(g)
        assert abs(measured - target) <= 0.15 * target
        assert g.ops_used() <= set(PRIMS) and g.steps == 2
    assert stats.draws >= 4 and stats.accepted >= 4
    again, _ = svr.sample_random_genotypes(PRIMS, 2, seed=0, wanted=4, target=target,
                                           tolerance=0.15, max_tries=10_000, predict=_fake_ops,
                                           exclude=(searched,))
    assert [g for g, _, _ in again] == genotypes
    other, _ = svr.sample_random_genotypes(PRIMS, 2, seed=1, wanted=4, target=target,
                                           tolerance=0.15, max_tries=10_000, predict=_fake_ops)
    assert [g for g, _, _ in other] != genotypes


def test_sampler_measurement_decides_over_the_prediction():
    # The screen accepts everything; the measurement only genotypes without skip_connect.
    def measure(g):
        return 1.0 if "skip_connect" not in g.ops_used() else 100.0

    found, _ = svr.sample_random_genotypes(PRIMS, 2, seed=0, wanted=2, target=1.0,
                                           tolerance=0.1, max_tries=10_000,
                                           predict=lambda g: 1.0, measure=measure)
    assert all("skip_connect" not in g.ops_used() for g, _, _ in found)


def test_sampler_gives_up_with_an_error_naming_the_flags():
    with pytest.raises(svr.BenchmarkError) as err:
        svr.sample_random_genotypes(PRIMS, 2, seed=0, wanted=3, target=1.0, tolerance=0.15,
                                    max_tries=200, predict=_fake_ops)
    message = str(err.value)
    for flag in ("--random=3", "--ops_tolerance=0.15", "--max_tries=200", "--primitives"):
        assert flag in message
    assert "Found only 0 of" in message


# The tiny network of the subprocess run (TRAIN_FLAGFILE), for the in-process OPs checks.
TINY_NETWORK = {"dataset": "fashion_mnist", "layers": 3, "init_channels": 32,
                "stem_multiplier": 1, "stem_strides": 4, "module_config": "universal",
                "allow_unaligned_widths": False}


def test_cost_table_equals_the_measured_ops_of_sampled_and_hand_designed_genotypes():
    """The screen (`ubnas_tf.search.budget`'s cost table) gives exactly the OPs that
    model_cost measures on the built network: for random draws and for every hand design,
    including the res_* ones whose cells never read input 0 (no preprocess0 layer)."""
    from ubnas_tf.genotype import Genotype

    searched = Genotype.from_dict(TINY_GENOTYPE, primitives=PRIMS)
    predict = svr.table_ops(TINY_NETWORK, PRIMS, searched.steps)

    def measure(g):
        return svr.eval_network_ops(g, TINY_NETWORK)

    target = measure(searched)
    assert math.isclose(predict(searched), target, rel_tol=1e-9)
    designs = svr.hand_designs(PRIMS, searched.steps, ["bconv_3x3"])
    assert set(designs) == {"all_bconv_3x3", "res_bconv_3x3", "pool_bconv_3x3"}
    for name, (g, _) in designs.items():
        assert math.isclose(predict(g), measure(g), rel_tol=1e-9), name
    found, stats = svr.sample_random_genotypes(PRIMS, searched.steps, seed=0, wanted=3,
                                               target=target, tolerance=0.15, max_tries=10_000,
                                               predict=predict, measure=measure,
                                               exclude=(searched,))
    # No draw passed the screen but failed on the network.
    assert len(found) == 3 and stats.accepted == 3
    for _, predicted, measured in found:
        assert math.isclose(predicted, measured, rel_tol=1e-9)
        assert abs(measured - target) <= 0.15 * target


@pytest.mark.parametrize("steps", [2, 4])
def test_hand_designs(steps):
    from ubnas_tf.ops import DEFAULT_PRIMITIVES

    prims = [p for p in DEFAULT_PRIMITIVES if p != "none"]
    binary = ["bconv_3x3", "bconv_5x5", "bdil_conv_3x3", "bdil_conv_5x5"]
    designs = svr.hand_designs(prims, steps, binary)
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
    assert set(svr.hand_designs(["bconv_3x3"], steps, ["bconv_3x3"])) == {"all_bconv_3x3"}
    assert svr.hand_designs(["skip_connect", "max_pool_3x3"], steps, []) == {}


def _results(random_acc, searched, hand):
    entries = [{"name": "searched", "kind": "searched", "status": "done",
                "best_model_test_accuracy": searched, "test_accuracy": searched - 0.5}]
    entries += [{"name": f"random_{i}", "kind": "random", "status": "done",
                 "best_model_test_accuracy": a, "test_accuracy": a - 0.5}
                for i, a in enumerate(random_acc, 1)]
    entries.append({"name": "hand_x", "kind": "hand", "status": "done",
                    "best_model_test_accuracy": hand, "test_accuracy": hand - 0.5})
    return {"entries": entries}


def test_compare_statistics_and_verdict():
    c = svr.compare(_results([0.80, 0.82, 0.84], searched=0.90, hand=0.85), "best")
    assert c["complete"] and c["metric"] == "best_model_test_accuracy"
    assert math.isclose(c["random_mean"], 0.82)
    assert math.isclose(c["random_std"], 0.02)  # ddof=1
    assert math.isclose(c["z_random_std"], 4.0)
    assert math.isclose(c["searched_minus_hand"], 0.05)
    assert c["beats_random"] and c["beats_hand"]
    c = svr.compare(_results([0.80, 0.82, 0.84], searched=0.85, hand=0.86), "best")
    assert not c["beats_random"] and not c["beats_hand"]  # 0.85 < 0.82 + 2 * 0.02
    assert "does NOT beat chance" in c["verdict"]
    c = svr.compare(_results([0.80, 0.82, 0.84], searched=0.85, hand=0.86), "final")
    assert c["metric"] == "test_accuracy" and math.isclose(c["searched"], 0.35)
    results = _results([0.80, 0.82], searched=0.9, hand=0.8)
    results["entries"][1]["status"] = "failed"
    assert not svr.compare(results, "best")["complete"]


def test_read_train_flagfile():
    pairs = dict(svr.read_train_flagfile(str(REPO / "flags" / "fashion_mnist_train.flags")))
    assert pairs["layers"] == "5" and pairs["stem_multiplier"] == "4"
    assert pairs["augment"] == "false"  # --noaugment
    assert set(pairs) <= set(svr.RECIPE_FLAGS) | set(svr.IGNORED_TRAIN_FLAGS)


def _settings(tmp: Path, **overrides) -> dict:
    genotype = tmp / "genotype.json"
    genotype.write_text(json.dumps(TINY_GENOTYPE), encoding="utf-8")
    settings = {"output_dir": str(tmp / "out"), "genotype": str(genotype), "primitives": None,
                "hand_design": "closest", "module_config": "universal", "dataset": "fashion_mnist",
                "data_dir": None, "max_examples": 20_000, "validation_examples": 2000,
                "batch_size": 128}
    settings.update(overrides)
    return settings


@pytest.mark.parametrize("overrides,pattern", [
    ({"primitives": ["bconv_3x3", "conv_9x9"]},
     r"^--primitives: Unknown primitive\(s\) \['conv_9x9'\]"),
    ({"primitives": ["bconv_3x3", "max_pool_3x3"]},
     r"uses \['skip_connect'\], which are not in --primitives=bconv_3x3,max_pool_3x3"),
    ({"primitives": ["skip_connect", "max_pool_3x3"]}, r"uses \['bconv_3x3'\]"),
    ({"hand_design": "vgg"}, r"^--hand_design='vgg' is unknown; use 'closest' or one of \[.*"
                             r"'all_bconv_3x3'"),
    ({"module_config": "nope"}, r"^--module_config='nope' is unknown"),
    ({"data_dir": "/nonexistent/dir"}, r"^--data_dir='/nonexistent/dir' is not a directory"),
    ({"output_dir": ""}, r"^--output_dir must name a directory"),
])
def test_check_settings_errors_name_the_flag(tmp_path, overrides, pattern):
    with pytest.raises(svr.BenchmarkError, match=pattern):
        svr.check_settings(_settings(tmp_path, **overrides))


def test_check_settings_errors_need_no_bconv_for_hand_designs(tmp_path):
    genotype = dict(TINY_GENOTYPE, normal=[["skip_connect", 0], ["max_pool_3x3", 1]] * 2,
                    reduce=[["max_pool_3x3", 0], ["skip_connect", 1]] * 2)
    (tmp_path / "pools.json").write_text(json.dumps(genotype), encoding="utf-8")
    settings = _settings(tmp_path, genotype=str(tmp_path / "pools.json"),
                         primitives=["skip_connect", "max_pool_3x3"])
    with pytest.raises(svr.BenchmarkError, match=r"allow no hand design"):
        svr.check_settings(settings)


def test_check_settings_output_dir_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(svr.BenchmarkError, match=r"--output_dir=.*file' exists and is not a dir"):
        svr.check_settings(_settings(tmp_path, output_dir=str(tmp_path / "file")))


@needs_fashion
def test_check_settings_accepts_and_checks_the_data(tmp_path):
    searched, primitives = svr.check_settings(_settings(tmp_path, primitives=None))
    assert primitives == ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "bconv_3x3",
                          "bconv_5x5", "bdil_conv_3x3", "bdil_conv_5x5")
    assert searched.steps == 2
    with pytest.raises(svr.BenchmarkError, match=r"^--batch_size=128 is larger than the 90 "):
        svr.check_settings(_settings(tmp_path, max_examples=100))


# ------------------------------------------------------------------------------------------
# Subprocesses
# ------------------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: float = 300) -> Result:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=subprocess_env(repo_on_path=False),
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def _write_subset(src: Path, dst: Path, n: int) -> None:
    """The first `n` items of a gzip IDX file, as a gzip IDX file."""
    with gzip.open(src, "rb") as f:
        magic, _ = struct.unpack(">II", f.read(8))
        ndim = magic & 0xFF
        dims = struct.unpack(f">{ndim - 1}I", f.read(4 * (ndim - 1)))
        data = f.read(n * int(np.prod(dims, dtype=np.int64)))
    with gzip.open(dst, "wb") as f:
        f.write(struct.pack(">II", magic, n) + struct.pack(f">{ndim - 1}I", *dims) + data)


# Bad command lines: each must fail in absl's own validators or the script's first checks,
# with a message naming the flag, before TensorFlow is imported (well under a second each).
def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    genotype = tmp / "genotype.json"
    genotype.write_text(json.dumps(TINY_GENOTYPE), encoding="utf-8")
    bad_flagfile = tmp / "bad.flags"
    bad_flagfile.write_text("--layers=1\n", encoding="utf-8")
    unknown_flagfile = tmp / "unknown.flags"
    unknown_flagfile.write_text("--no_such_flag=3\n", encoding="utf-8")
    g = f"--genotype={genotype}"
    o = f"--output_dir={tmp / 'out'}"
    return {
        "genotype-missing": ([o], [r"--genotype"]),
        "genotype-nonexistent": ([o, f"--genotype={tmp / 'nope.json'}"],
                                 [r"--genotype must name an existing genotype\.json"]),
        "random-1": ([o, g, "--random=1"], [r"flag --random=1: 1 is not integer >= 2"]),
        "tolerance-zero": ([o, g, "--ops_tolerance=0"], [r"--ops_tolerance must be > 0"]),
        "tolerance-negative": ([o, g, "--ops_tolerance=-0.1"], [r"flag --ops_tolerance=-0\.1"]),
        "metric": ([o, g, "--metric=median"], [r"flag --metric=median"]),
        "stem-strides": ([o, g, "--stem_strides=3"], [r"--stem_strides must be 1, 2, 4 or 8"]),
        "init-channels": ([o, g, "--init_channels=24"],
                          [r"--init_channels must be a multiple of 32"]),
        "max-examples": ([o, g, "--max_examples=-5"], [r"flag --max_examples=-5"]),
        "train-flagfile-bad-value": ([o, g, f"--train_flagfile={bad_flagfile}"],
                                     [r"error: --train_flagfile=.*bad\.flags", r"--layers"]),
        "train-flagfile-unknown-flag": ([o, g, f"--train_flagfile={unknown_flagfile}"],
                                        [r"--train_flagfile=.*unknown training flag --no_such"]),
        "train-flagfile-missing": ([o, g, f"--train_flagfile={tmp / 'nope.flags'}"],
                                   [r"--train_flagfile=.*nope\.flags' does not exist"]),
    }


BAD_CASES = ["genotype-missing", "genotype-nonexistent", "random-1", "tolerance-zero",
             "tolerance-negative", "metric", "stem-strides", "init-channels", "max-examples",
             "train-flagfile-bad-value", "train-flagfile-unknown-flag", "train-flagfile-missing"]


@dataclass
class Runs:
    root: Path
    out: Path
    args: list[str]
    first: Result | None  # None without Fashion-MNIST
    bad: dict[str, tuple[Result, list[str]]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """The tiny benchmark in the background, the bad command lines meanwhile."""
    root = tmp_path_factory.mktemp("svr")
    out = root / "out"
    args, proc, start = [], None, time.monotonic()
    if HAVE_FASHION and all((FASHION_DIR / f"{b}.gz").is_file() for b in FASHION_FILES):
        data = root / "data"
        data.mkdir()
        for base in FASHION_FILES:
            _write_subset(FASHION_DIR / f"{base}.gz", data / f"{base}.gz",
                          N_TRAIN if base.startswith("train") else N_TEST)
        (root / "genotype.json").write_text(json.dumps(TINY_GENOTYPE), encoding="utf-8")
        (root / "tiny_train.flags").write_text(TRAIN_FLAGFILE, encoding="utf-8")
        args = [f"--genotype={root / 'genotype.json'}", f"--output_dir={out}",
                f"--train_flagfile={root / 'tiny_train.flags'}", f"--data_dir={data}",
                f"--primitives={','.join(PRIMS)}", "--random=2", "--max_examples=0",
                "--validation_examples=40", "--stage1_epochs=0", "--epochs=1", "--verbose=2"]
        # Output to files: a pipe could fill up while the bad cases run.
        stdout, stderr = open(root / "stdout", "w"), open(root / "stderr", "w")
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=root, env=subprocess_env(repo_on_path=False),
                                stdout=stdout, stderr=stderr, text=True)
    bad_dir = root / "bad"
    bad_dir.mkdir()
    cases = _bad_cases(bad_dir)
    assert sorted(cases) == sorted(BAD_CASES)
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(_run, case_args, bad_dir, 120)
                   for name, (case_args, _) in cases.items()}
        bad = {name: (f.result(), cases[name][1]) for name, f in futures.items()}
    first = None
    if proc is not None:
        try:
            proc.wait(timeout=400)
        finally:
            proc.kill()
            stdout.close()
            stderr.close()
        first = Result(proc.returncode, (root / "stdout").read_text(),
                       (root / "stderr").read_text(), time.monotonic() - start)
    return Runs(root, out, args, first, bad)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_flags_fail_naming_the_flag(runs, case):
    result, patterns = runs.bad[case]
    assert result.returncode != 0, str(result)
    for pattern in patterns:
        assert re.search(pattern, result.output), f"{pattern!r} not in\n{result}"
    assert "Traceback" not in result.output, str(result)
    assert not (runs.root / "bad" / "out" / "results.json").exists()


@needs_fashion
def test_results_entries_genotypes_and_report(runs):
    from ubnas_tf.genotype import Genotype

    first = runs.first
    assert first is not None and first.returncode == 0, str(first)
    results = json.loads((runs.out / "results.json").read_text())
    entries = results["entries"]
    names = [e["name"] for e in entries]
    assert names[:3] == ["searched", "random_1", "random_2"] and len(names) == 4
    assert [e["kind"] for e in entries] == ["searched", "random", "random", "hand"]
    hand = entries[3]
    assert hand["name"] == f"hand_{results['hand_design']['name']}"
    searched_ops = results["searched_ops"]
    assert entries[0]["ops"] == searched_ops > 0
    genotypes = []
    for e in entries:
        assert e["status"] == "done", e
        for key in ("test_accuracy", "best_model_test_accuracy", "best_val_accuracy"):
            assert 0.0 <= e[key] <= 1.0
        g = Genotype.load(runs.out / e["genotype_file"], primitives=PRIMS)
        genotypes.append(g)
        assert e["short"] == svr.short_genotype(g)
        assert g.steps == 2
        # Each genotype's training is a tools/train.py run directory with the one recipe.
        run = runs.out / e["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["best_model_test_accuracy"] == e["best_model_test_accuracy"]
        recorded = json.loads((run / "flags.json").read_text())
        assert recorded["tool"] == "train"
        assert recorded["flags"]["genotype"] == str(runs.out / e["genotype_file"])
        assert recorded["flags"]["layers"] == 3 and recorded["flags"]["epochs"] == 1
        assert recorded["flags"]["stage1_epochs"] == 0 and recorded["flags"]["seed"] == 0
        # OPs as tools/summary.py counts them, here on the trained inference model.
        assert math.isclose(summary["cost"]["ops"], e["ops"])
    assert genotypes[0] == Genotype.from_dict(TINY_GENOTYPE, primitives=PRIMS)
    assert len(set(genotypes)) == 4

    # Random genotypes: from the primitives, within the tolerance. The cost table that
    # screened them and the hand designs gives the OPs measured on the real network.
    assert entries[0]["predicted_ops"] is None
    for e, g in zip(entries[1:3], genotypes[1:3], strict=True):
        assert abs(e["ops"] - searched_ops) <= 0.15 * searched_ops
        assert math.isclose(e["predicted_ops"], e["ops"], rel_tol=1e-9)
        assert g.ops_used() <= set(PRIMS)
    assert math.isclose(hand["predicted_ops"], hand["ops"], rel_tol=1e-9)
    # The hand design is the considered one closest to the searched OPs.
    closest = min(results["hand_designs_considered"], key=lambda d: abs(d["rel_diff"]))
    assert results["hand_design"]["name"] == closest["name"]
    assert closest["predicted_ops"] == hand["predicted_ops"]
    assert results["sampling"]["accepted_by_model"] == 2  # the screen let nothing wrong through
    assert results["hand_design"]["within_tolerance"] == (abs(hand["ops_rel_diff"]) <= 0.15)

    c = results["comparison"]
    acc = [e["best_model_test_accuracy"] for e in entries[1:3]]
    assert c["complete"] and c["metric"] == "best_model_test_accuracy"
    assert math.isclose(c["random_std"], float(np.std(acc, ddof=1)))
    assert math.isclose(c["searched_minus_hand"],
                        entries[0]["best_model_test_accuracy"] - hand["best_model_test_accuracy"])

    # --train_flagfile gave the network, the command line the schedule and the directory.
    settings = json.loads((runs.out / "flags.json").read_text())["flags"]
    assert settings["layers"] == 3 and settings["stem_strides"] == 4
    assert settings["epochs"] == 1 and settings["augment"] is False
    assert not (runs.root / "runs").exists()

    out = first.stdout
    assert re.search(r"^name\s+genotype.*MOPs.*acc best-val\s+acc final\s+wall$", out, re.M)
    assert "searched - random mean = " in out and "random std" in out and "ddof=1" in out
    assert "searched - hand-designed = " in out
    assert re.search(r"^VERDICT: searched > random mean \+ 2 std: (YES|NO); searched > "
                     r"hand-designed: (YES|NO)", out, re.M)
    assert re.search(r"Hand design \w+ .*(WITHIN|OUTSIDE) the \+-15% tolerance", out)
    assert re.search(r"^12/12 - .*loss: .*val_accuracy: ", out, re.M)  # Keras progress shows


@needs_fashion
def test_rerun_skips_finished_trainings_and_other_settings_are_refused(runs):
    assert runs.first is not None and runs.first.returncode == 0, str(runs.first)
    summaries = sorted(runs.out.glob("*/summary.json"))
    assert len(summaries) == 4
    before = {p: p.stat().st_mtime_ns for p in summaries}
    results_before = json.loads((runs.out / "results.json").read_text())
    # The rerun and the refused run are independent: run them side by side.
    other_args = [a for a in runs.args if a != "--epochs=1"] + ["--epochs=2"]
    with ThreadPoolExecutor(2) as pool:
        rerun_f = pool.submit(_run, runs.args, runs.root)
        other_f = pool.submit(_run, other_args, runs.root)
        rerun, other = rerun_f.result(), other_f.result()

    assert rerun.returncode == 0, str(rerun)
    assert "Resuming the benchmark" in rerun.stdout
    assert rerun.stdout.count("already trained, skipped") == 4
    assert "loss:" not in rerun.stdout and "Tabulating" not in rerun.stdout
    assert rerun.elapsed < runs.first.elapsed / 2, (rerun.elapsed, runs.first.elapsed)
    assert {p: p.stat().st_mtime_ns for p in summaries} == before
    results_after = json.loads((runs.out / "results.json").read_text())
    assert results_after["entries"] == results_before["entries"]

    assert other.returncode == 2, str(other)
    assert "--epochs: run directory has 1, now 2" in other.stderr
    assert "--overwrite" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in summaries} == before
