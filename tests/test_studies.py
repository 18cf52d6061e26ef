"""ubnas_tf.experiments.studies: a study's trials on the evidence runner, its resume through
the ledger, its tables; and the measured tool step it runs (ubnas_tf.evidence.steps).

The tools are faked (`steps.run_tool` replaced by a function that writes what
tools/search.py and tools/train.py would write), so nothing trains; the real flagfiles give
the recipes and their hashes. Every ledger is a temporary one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ubnas_tf import DEFAULT_PRIMITIVES
from ubnas_tf.evidence import steps
from ubnas_tf.evidence.ledger import COLUMNS, Ledger, Recipe, genotype_hash
from ubnas_tf.experiments import studies
from ubnas_tf.genotype import random_genotype
from ubnas_tf.modules import MODULE_CONFIGS

REPO = str(Path(__file__).resolve().parents[1])
SEARCH = "flags/fashion_mnist.flags"
TRAIN = "flags/fashion_mnist_short_train.flags"
BASE_HASH = Recipe(TRAIN).hash(REPO)


def _settings(tmp_path: Path, study: str, **kw) -> studies.Settings:
    return studies.Settings(study=study, ledger=str(tmp_path / "evidence" / "ledger.csv"),
                            work_dir=str(tmp_path / "work"), **kw)


def _flag(args, name: str) -> str:
    return next(a for a in args if a.startswith(f"--{name}=")).split("=", 1)[1]


class FakeTools:
    """Stands in for `steps.run_tool`: writes what the tools would write and records each run.

    A search derives the genotype `genotypes(args)` returns (a random genotype's seed; by
    default its --seed), and runs `epochs` epochs; a retraining reaches `acc(args)` (default
    0.85 + training seed / 100). `stop` maps a tool module to the exit status of its next run
    (75: SIGTERM with the state saved; -15: killed by SIGTERM while starting)."""

    def __init__(self, genotypes=None, acc=None, stop=None):
        self.calls: list[list[str]] = []
        self.genotypes = genotypes or (lambda args: int(_flag(args, "seed")))
        self.acc = acc or (lambda args: 0.85 + int(_flag(args, "seed")) / 100)
        self.stop = dict(stop or {})

    def modules(self) -> list[str]:
        return [a[0] for a in self.calls]

    def __call__(self, args):
        self.calls.append(list(args))
        out = Path(_flag(args, "output_dir"))
        out.mkdir(parents=True, exist_ok=True)
        if args[0] in self.stop:
            (out / "state.json").write_text(json.dumps({"finished": False}))
            return self.stop.pop(args[0]), 30.0, 900.0
        if args[0] == "ubnas_tf.cli.search":
            random_genotype(DEFAULT_PRIMITIVES, rng=self.genotypes(args)).save(
                out / "genotype.json")
            patience = (int(_flag(args, "patience"))
                        if any(a.startswith("--patience=") for a in args) else 0)
            epochs = 6 if patience == 1 else 7
            summary = {"epochs_run": epochs,
                       "stop_reason": "genotype_stable" if epochs < 7 else "max_epochs",
                       "images_per_second": 64.0, "decisiveness": {"op_max_kept": 0.994}}
            wall = 420.0
        else:
            summary = {"cost": {"ops": 1.5e6}, "best_model_test_accuracy": self.acc(args),
                       "test_accuracy": 0.84, "best_val_accuracy": 0.86, "wall_time_s": 540.0}
            wall = 540.0
        (out / "summary.json").write_text(json.dumps(summary))
        (out / "state.json").write_text(json.dumps({"finished": True}))
        return 0, wall, 2000.0


def _no_tool(args):
    pytest.fail(f"ran a tool: {args}")


# -- the study's grid and its trials ---------------------------------------------------------


def test_every_study_has_distinct_variants_of_search_flags():
    for study in studies.STUDIES.values():
        names = [v.name for v in study.variants]
        assert len(names) == len(set(names)) >= 4
    k = {v.name: v.overrides for v in studies.STUDIES["k_ratio"].variants}
    assert {"k2_2", "k4_4", "k8_4", "k8_8", "k4_8"} <= set(k)
    assert k["k8_4"] == {"k_normal": 8, "k_reduce": 4}
    assert k["k4_8"] == {"k_normal": 4, "k_reduce": 8}
    patience = [v.overrides["patience"] for v in studies.STUDIES["early_stopping"].variants]
    assert 0 in patience and len(set(patience) - {0}) >= 2  # without, and two patience values


def test_a_study_is_one_searched_trial_per_variant_and_seed(tmp_path):
    trials = studies.study_trials(_settings(tmp_path, "k_ratio", seeds=(0, 1), train_seed=3))
    assert len(trials) == 10
    assert {t.arm for t in trials} == {"searched"}
    assert [t.variant for t in trials[:4]] == ["k_ratio:k2_2"] * 2 + ["k_ratio:k4_4"] * 2
    first = trials[0]
    assert first.origin == str(first.search) == f"{SEARCH} --k_normal=2 --k_reduce=2 --seed=0"
    assert first.search.flagfile == SEARCH and first.search.seed == 0
    assert first.search.overrides == ("k_normal=2", "k_reduce=2")
    assert trials[1].origin.endswith("--seed=1")
    # One recipe for the whole study, the bare flagfile: the ledger's main recipe.
    assert {t.recipe for t in trials} == {Recipe(TRAIN)} and {t.train_seed for t in trials} == {3}
    assert trials[0].recipe.hash(REPO) == BASE_HASH

    variants = {v.name: v for v in studies.STUDIES["module_structure"].variants}
    assert list(variants) == list(MODULE_CONFIGS)
    chosen = studies.study_trials(_settings(tmp_path, "module_structure",
                                            variants=("reactnet", "universal")))
    # The study's order, whatever the order of --variants; search and retraining both with
    # the structure, so that each structure is its own recipe.
    assert [t.variant for t in chosen] == ["module_structure:universal",
                                           "module_structure:reactnet"]
    for t, name in zip(chosen, ("universal", "reactnet"), strict=True):
        assert t.search.overrides == t.recipe.overrides == (f"module_config={name}",)
        assert t.origin == f"{SEARCH} --module_config={name} --seed=0"
    hashes = {t.recipe.hash(REPO) for t in chosen}
    assert len(hashes) == 2 and BASE_HASH not in hashes


# -- running: the ledger, resume, SIGTERM ----------------------------------------------------


def test_a_study_retrains_into_the_ledger_and_a_rerun_runs_no_tool(tmp_path, monkeypatch,
                                                                   capsys):
    settings = _settings(tmp_path, "early_stopping", seeds=(0, 1),
                         variants=("no_early_stop", "patience1"))
    tools = FakeTools(genotypes=lambda args: 10 * ("--patience=1" in args)
                      + int(_flag(args, "seed")))

    def killed(args):  # the study is killed (SIGKILL, a crash) in its 4th tool run
        if len(tools.calls) == 3:
            raise KeyboardInterrupt("killed")
        return tools(args)

    monkeypatch.setattr(steps, "run_tool", killed)
    with pytest.raises(KeyboardInterrupt):
        studies.run_study(settings)
    ledger = Ledger(settings.ledger)
    assert len(ledger.rows()) == 1  # no_early_stop/seed0; seed1's search finished too

    monkeypatch.setattr(steps, "run_tool", tools)
    tools.calls.clear()
    assert studies.run_study(settings) == 0
    # Nothing that finished is run again: seed1's retraining, then both patience1 cells.
    assert tools.modules() == ["ubnas_tf.cli.train", "ubnas_tf.cli.search",
                               "ubnas_tf.cli.train", "ubnas_tf.cli.search",
                               "ubnas_tf.cli.train"]
    rows = ledger.rows()
    assert [(r["arm"], r["variant"], r["origin"]) for r in rows] == [
        ("searched", "early_stopping:no_early_stop", f"{SEARCH} --patience=0 --seed=0"),
        ("searched", "early_stopping:no_early_stop", f"{SEARCH} --patience=0 --seed=1"),
        ("searched", "early_stopping:patience1", f"{SEARCH} --patience=1 --seed=0"),
        ("searched", "early_stopping:patience1", f"{SEARCH} --patience=1 --seed=1")]
    assert {r["recipe"] for r in rows} == {TRAIN} and {r["recipe_hash"] for r in rows} == {
        BASE_HASH}
    for row in rows:  # the genotype JSONs beside the ledger
        assert os.path.isfile(ledger.genotype_path(row["genotype"]))
    train = tools.calls[-1]
    assert f"--flagfile={TRAIN}" in train and "--seed=0" in train
    assert _flag(train, "genotype") == ledger.genotype_path(rows[-1]["genotype"])
    search = tools.calls[-2]
    assert _flag(search, "output_dir") == str(
        tmp_path / "work" / "search" / "fashion_mnist_patience-1_seed1")
    assert (tmp_path / "work" / "early_stopping" / "results.md").is_file()

    monkeypatch.setattr(steps, "run_tool", _no_tool)
    capsys.readouterr()
    assert studies.run_study(settings) == 0
    assert "4 of 4 trials are in" in capsys.readouterr().out
    assert len(ledger.rows()) == 4


def test_a_search_deriving_a_genotype_the_ledger_holds_is_not_retrained(tmp_path, monkeypatch):
    settings = _settings(tmp_path, "k_ratio", variants=("k4_4",))
    ledger = Ledger(settings.ledger)
    held = random_genotype(DEFAULT_PRIMITIVES, rng=7)
    row = dict.fromkeys(COLUMNS, "")  # retrained before, by another experiment
    row.update(arm="searched", genotype=ledger.store_genotype(held), origin=f"{SEARCH} --seed=0",
               mops=1.58746, recipe=TRAIN, recipe_hash=BASE_HASH, train_seed=0,
               test_accuracy=0.8799, wall_time_s=436.7)
    ledger.append([row])
    tools = FakeTools(genotypes=lambda args: 7)
    monkeypatch.setattr(steps, "run_tool", tools)
    assert studies.run_study(settings) == 0
    assert tools.modules() == ["ubnas_tf.cli.search"]  # searched, not retrained
    assert len(ledger.rows()) == 1

    rows, _, pending = studies.write_results(settings, ledger)
    assert pending == []
    (cell,) = rows
    assert cell["genotype"] == genotype_hash(held) and cell["test_acc"] == 0.8799
    assert cell["train_min"] == pytest.approx(436.7 / 60) and cell["mops"] == 1.58746
    assert cell["search_min"] == 7.0 and cell["epochs_run"] == 7  # its own search
    assert cell["retrained_for"] == f"searched {SEARCH} --seed=0"

    monkeypatch.setattr(steps, "run_tool", _no_tool)  # re-run: the finished search is read
    assert studies.run_study(settings) == 0

    # The same genotype under another recipe (a module structure's) is another retraining.
    tools = FakeTools(genotypes=lambda args: 7)
    monkeypatch.setattr(steps, "run_tool", tools)
    assert studies.run_study(_settings(tmp_path, "module_structure",
                                       variants=("reactnet",))) == 0
    assert tools.modules() == ["ubnas_tf.cli.search", "ubnas_tf.cli.train"]
    assert "--module_config=reactnet" in tools.calls[1]
    assert [r["genotype"] for r in ledger.rows()] == [genotype_hash(held)] * 2


# 75: the tool saved its state and exited; -15: SIGTERM arrived while it was still starting,
# before its handler was installed, so it died of the signal with nothing new to save.
@pytest.mark.parametrize("code, tool", [(steps.STOPPED_BY_SIGTERM, "ubnas_tf.cli.search"),
                                        (-signal.SIGTERM, "ubnas_tf.cli.search"),
                                        (steps.STOPPED_BY_SIGTERM, "ubnas_tf.cli.train")])
def test_a_tool_stopped_by_sigterm_stops_the_study_resumably(tmp_path, monkeypatch, capsys,
                                                             code, tool):
    settings = _settings(tmp_path, "k_ratio", variants=("k8_4",))
    tools = FakeTools(stop={tool: code})
    monkeypatch.setattr(steps, "run_tool", tools)
    assert studies.run_study(settings) == steps.STOPPED_BY_SIGTERM
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stopped:" in err and "re-run the same command to resume" in err
    assert Ledger(settings.ledger).rows() == []
    assert "k8_4/seed0" in (tmp_path / "work" / "k_ratio" / "results.md").read_text()

    tools.calls.clear()
    assert studies.run_study(settings) == 0
    stopped_search = tool == "ubnas_tf.cli.search"
    # The stopped step resumes; a finished one is not run again.
    assert tools.modules() == (["ubnas_tf.cli.search", "ubnas_tf.cli.train"] if stopped_search
                               else ["ubnas_tf.cli.train"])
    assert len(Ledger(settings.ledger).rows()) == 1
    name = "fashion_mnist_k_normal-8_k_reduce-4_seed0"
    timing = json.loads((tmp_path / "work" / "search" / "timing.json").read_text())[name]
    assert timing["sessions"] == 1 + stopped_search  # the stopped session counts
    assert timing["wall_s"] == 420.0 + 30.0 * stopped_search


# -- the tables --------------------------------------------------------------------------------


def _search_dir(settings, variant: str, seed: int, *, genotype: int, epochs: int,
                wall: float) -> str:
    """A finished search of a cell, as tools/search.py and run_step leave it; returns the
    hash of its genotype."""
    v = next(v for v in studies.STUDIES[settings.study].variants if v.name == variant)
    name = studies.cell_trial(settings, v, seed).search.name
    out = Path(settings.work_dir) / "search" / name
    out.mkdir(parents=True)
    g = random_genotype(DEFAULT_PRIMITIVES, rng=genotype)
    g.save(out / "genotype.json")
    (out / "summary.json").write_text(json.dumps({
        "epochs_run": epochs, "stop_reason": "genotype_stable" if epochs < 7 else "max_epochs",
        "images_per_second": 40.0, "decisiveness": {"op_max_kept": 0.9}}))
    (out / "state.json").write_text(json.dumps({"finished": True}))
    steps.record_session(str(out.parent / "timing.json"), name, wall, 2000.0)
    return genotype_hash(g)


def _row(ledger: Ledger, genotype: int, acc: float, *, origin: str, variant: str = "",
         wall: float = 540.0, arm: str = "searched") -> None:
    row = dict.fromkeys(COLUMNS, "")
    row.update(arm=arm, variant=variant, origin=origin, mops=1.5, recipe=TRAIN,
               genotype=ledger.store_genotype(random_genotype(DEFAULT_PRIMITIVES, rng=genotype)),
               recipe_hash=BASE_HASH, train_seed=0, test_accuracy=acc, wall_time_s=wall)
    ledger.append([row])


def test_the_tables_take_the_search_from_its_run_dir_and_the_rest_from_the_ledger(tmp_path):
    settings = _settings(tmp_path, "early_stopping", seeds=(0, 1), variants=("no_early_stop",))
    ledger = Ledger(settings.ledger)
    _search_dir(settings, "no_early_stop", 0, genotype=0, epochs=7, wall=600.0)
    _search_dir(settings, "no_early_stop", 1, genotype=1, epochs=7, wall=660.0)
    _search_dir(settings, "patience1", 0, genotype=2, epochs=5, wall=420.0)
    _search_dir(settings, "patience1", 1, genotype=3, epochs=5, wall=400.0)  # not retrained
    es = "early_stopping"
    _row(ledger, 0, 0.80, origin=f"{SEARCH} --patience=0 --seed=0", variant=f"{es}:no_early_stop")
    _row(ledger, 1, 0.84, origin="draw 3 of seed 0", wall=600.0, arm="random")  # by genotype
    _row(ledger, 2, 0.82, origin=f"{SEARCH} --patience=1 --seed=0", variant=f"{es}:patience1")
    # A cell whose search directory is not here (another checkout): its own row still counts.
    _row(ledger, 5, 0.86, origin=f"{SEARCH} --patience=3 --seed=1", variant=f"{es}:patience3")

    rows, summary, pending = studies.write_results(settings, ledger)
    # The variant asked for, and the others with finished cells (from earlier commands).
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("no_early_stop", 0), ("no_early_stop", 1), ("patience1", 0), ("patience3", 1)]
    assert pending == ["patience1/seed1", "patience3/seed0"]
    by_cell = {(r["variant"], r["seed"]): r for r in rows}
    first = by_cell[("no_early_stop", 0)]
    assert first["test_acc"] == 0.80 and first["mops"] == 1.5 and first["train_min"] == 9.0
    assert first["search_min"] == 10.0 and first["peak_rss_mb"] == 2000.0
    assert first["epochs_run"] == 7 and first["op_max_kept"] == 0.9
    assert first["retrained_for"] == studies.ITSELF
    assert by_cell[("no_early_stop", 1)]["retrained_for"] == "random draw 3 of seed 0"
    assert by_cell[("no_early_stop", 1)]["train_min"] == 10.0
    elsewhere = by_cell[("patience3", 1)]
    assert elsewhere["test_acc"] == 0.86 and elsewhere["search_min"] is None
    assert elsewhere["epochs_run"] is None and elsewhere["stop_reason"] == "-"

    agg = {a["variant"]: a for a in summary}
    assert agg["no_early_stop"]["n"] == 2
    assert agg["no_early_stop"]["test_acc"][0] == pytest.approx(0.82)
    assert agg["no_early_stop"]["test_acc"][1] == pytest.approx(math.sqrt(0.0008))  # ddof=1
    assert agg["patience1"]["test_acc"][1] is None  # one seed: no spread claimed
    assert agg["patience3"]["search_min"] == (None, None)

    out = tmp_path / "work" / "early_stopping"
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["search_min"] for t in table] == ["10.0", "11.0", "7.0", ""]
    md = (out / "results.md").read_text()
    assert "| no_early_stop | 2 | max_epochs | 7.0 ± 0.0 | 10.5 ± 0.7 |" in md
    assert "| patience3 | 1 | - | - | - |" in md
    assert "Not finished yet: patience1/seed1, patience3/seed0." in md


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (lambda p: {"study": "nope"}, "--study='nope' is not a study"),
    (lambda p: {"variants": ("k4_4", "patience2")},
     "--variants: patience2 is not a variant of --study=k_ratio; its variants are k2_2, k4_4"),
    (lambda p: {"seeds": (-1,)}, "--seeds=-1 must be integers"),
    (lambda p: {"search_flagfile": "flags/nope.flags"},
     "--search_flagfile=flags/nope.flags is not a flagfile"),
    (lambda p: {"train_flagfile": "nope.flags"}, "--train_flagfile=nope.flags is not a flagfile"),
    (lambda p: {"work_dir": str(p / "file" / "work")}, "--work_dir="),
    (lambda p: {"ledger": str(p / "file" / "ledger.csv")}, "--ledger's directory="),
    (lambda p: {"ledger": str(p / "other.csv")}, "other.csv: "),  # --ledger=.../other.csv: ...
    (lambda p: {"ledger": str(p)}, "is a directory, not a ledger file"),
], ids=["study", "variants", "seeds", "search_flagfile", "train_flagfile", "work_dir",
        "ledger_dir", "not_a_ledger", "ledger_is_dir"])
def test_bad_input_fails_in_one_line_naming_the_flag_before_any_work(tmp_path, monkeypatch,
                                                                      capsys, change, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    settings = studies.Settings(**{"study": "k_ratio", "ledger": str(tmp_path / "l" / "l.csv"),
                                   "work_dir": str(tmp_path / "work"), **change(tmp_path)})
    monkeypatch.setattr(steps, "run_tool", _no_tool)
    assert studies.run_study(settings) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ": error: " in err and message in err, err
    if "ledger" in str(change(tmp_path)):
        assert "error: --ledger" in err  # named by its flag
    assert not (tmp_path / "work").exists() and not (tmp_path / "l").exists()


def test_the_command_line_refuses_bad_input_with_status_2(tmp_path):
    (tmp_path / "file").write_text("x")
    script = os.path.join(REPO, "benchmarks", "studies.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    commands = [  # absl's validator, at parse time; and the study's check, before any work
        ["--study=k_ratio", "--variants=k4_4,patience2"],
        ["--study=k_ratio", f"--work_dir={tmp_path / 'file' / 'work'}"],
    ]

    def run(args):
        return subprocess.run([sys.executable, script, *args,
                               f"--ledger={tmp_path / 'evidence' / 'ledger.csv'}"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)

    with ThreadPoolExecutor(len(commands)) as pool:
        variant, work_dir = pool.map(run, commands)
    assert variant.returncode == 2, variant.stdout + variant.stderr
    assert ("error: --variants: patience2 is not a variant of --study=k_ratio; its variants "
            "are k2_2, k4_4, k8_4, k8_8, k4_8") in variant.stderr
    assert work_dir.returncode == 2, work_dir.stdout + work_dir.stderr
    assert "studies.py: error: --work_dir=" in work_dir.stderr
    assert not (tmp_path / "evidence").exists()


# -- the measured tool step (ubnas_tf.evidence.steps) ----------------------------------------


def test_run_tool_measures_the_child_alone():
    ballast = np.ones(400 * 2**18)  # 800 MB in this process: not the child's
    code, wall, peak = steps.run_tool(
        ["timeit", "-n1", "-r1", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert code == 0 and wall > 0
    assert 300 <= peak < 600, peak  # the child's own peak, not this test process's
    del ballast
    code, _, _ = steps.run_tool(["json.tool", "/does/not/exist"])
    assert code != 0


def test_a_finished_step_is_not_run_again_and_a_run_one_is_timed(tmp_path, monkeypatch):
    done = tmp_path / "search"
    done.mkdir()
    (done / "summary.json").write_text("{}")
    (done / "state.json").write_text(json.dumps({"finished": True}))
    monkeypatch.setattr(steps, "run_tool", _no_tool)
    steps.run_step(str(tmp_path), "search", "cell", ["ubnas_tf.cli.search"])
    monkeypatch.setattr(steps, "run_tool", lambda args: (0, 2.0, 5.0))
    steps.run_step(str(tmp_path), "train", "cell", ["ubnas_tf.cli.train"])
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing == {"train": {"wall_s": 2.0, "peak_rss_mb": 5.0, "sessions": 1}}
    monkeypatch.setattr(steps, "run_tool", lambda args: (1, 2.0, 5.0))
    with pytest.raises(RuntimeError, match="cell: the train exited 1"):
        steps.run_step(str(tmp_path), "train", "cell", ["ubnas_tf.cli.train"])


def test_a_session_killed_with_the_study_counts_up_to_its_last_saved_state(tmp_path):
    timing, run_dir = tmp_path / "timing.json", tmp_path / "search"
    run_dir.mkdir()
    steps.mark_running(str(timing), "search", str(run_dir))
    since = json.loads(timing.read_text())["search"]["running_since"]
    (run_dir / "state.json").write_text("{}")
    os.utime(run_dir / "state.json", (since + 120.0, since + 120.0))  # saved 2 min in, then killed
    steps.mark_running(str(timing), "search", str(run_dir))  # the next session starts
    steps.record_session(str(timing), "search", 30.0, 900.0)  # and finishes in 30 s
    t = json.loads(timing.read_text())["search"]
    assert t == {"wall_s": pytest.approx(150.0), "peak_rss_mb": 900.0, "sessions": 2}


def test_run_tool_passes_sigterm_on_to_the_tool(tmp_path):
    # run_tool in a process of its own, so a stray SIGTERM can only ever reach that one.
    ready = tmp_path / "ready"
    tool = ("import os, signal, time; signal.signal(signal.SIGTERM, lambda *a: os._exit(75)); "
            f"open({str(ready)!r}, 'w').close(); time.sleep(60)")
    script = ("from ubnas_tf.evidence import steps\n"
              f"code, wall, _ = steps.run_tool(['timeit', '-n1', '-r1', {tool!r}])\n"
              "print('CODE', code, round(wall))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and ready.exists(), out
    code, wall = (int(v) for v in out.split("CODE")[1].split())
    assert code == steps.STOPPED_BY_SIGTERM and wall < 100
