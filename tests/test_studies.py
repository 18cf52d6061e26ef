"""ubnas_tf.experiments.studies: a study's grid, its per-child measurements and its tables."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ubnas_tf import DEFAULT_PRIMITIVES
from ubnas_tf.errors import StepStopped
from ubnas_tf.evidence import steps
from ubnas_tf.experiments import studies
from ubnas_tf.genotype import random_genotype

REPO = str(Path(__file__).resolve().parents[1])


def _fake_cell(out: Path, variant: str, seed: int, *, acc: float, epochs: int, wall: float,
               finished: bool = True, genotype: int = 0) -> None:
    """A cell as the tools leave it; `genotype` seeds the random genotype its search derived."""
    cell = out / variant / f"seed{seed}"
    for step in ("search", "train"):
        (cell / step).mkdir(parents=True)
        (cell / step / "state.json").write_text(json.dumps({"finished": finished}))
    random_genotype(DEFAULT_PRIMITIVES, rng=genotype).save(cell / "search" / "genotype.json")
    (cell / "search" / "summary.json").write_text(json.dumps({
        "epochs_run": epochs, "stop_reason": "genotype_stable" if epochs < 7 else "max_epochs",
        "images_per_second": 40.0, "decisiveness": {"op_max_kept": 0.9}}))
    (cell / "train" / "summary.json").write_text(json.dumps({
        "best_model_test_accuracy": acc, "cost": {"ops": 1.5e6}}))
    (cell / "timing.json").write_text(json.dumps({
        "search": {"wall_s": wall, "peak_rss_mb": 2000.0, "sessions": 1},
        "train": {"wall_s": 540.0, "peak_rss_mb": 1900.0, "sessions": 1}}))


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


def test_results_aggregate_seeds_and_list_what_is_missing(tmp_path):
    settings = {"seeds": ["0", "1"], "search_flagfile": "flags/fashion_mnist.flags",
                "train_flagfile": "flags/fashion_mnist_short_train.flags", "train_seed": 0}
    _fake_cell(tmp_path, "no_early_stop", 0, acc=0.80, epochs=7, wall=600.0)
    _fake_cell(tmp_path, "no_early_stop", 1, acc=0.84, epochs=7, wall=660.0)
    _fake_cell(tmp_path, "patience1", 0, acc=0.82, epochs=5, wall=420.0)
    _fake_cell(tmp_path, "patience1", 1, acc=0.0, epochs=5, wall=0.0, finished=False)

    rows, _, pending = studies.write_results(str(tmp_path), "early_stopping", settings)
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("no_early_stop", 0), ("no_early_stop", 1), ("patience1", 0)]
    assert pending == ["patience1/seed1", "patience2/seed0", "patience2/seed1",
                       "patience3/seed0", "patience3/seed1"]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["search_min"]) for r in table] == [10.0, 11.0, 7.0]
    summary = studies.summarise(rows, studies.STUDIES["early_stopping"].variants)
    first = summary[0]
    assert first["n"] == 2 and first["test_acc"][0] == pytest.approx(0.82)
    assert first["test_acc"][1] == pytest.approx(math.sqrt(0.0008))  # sample std, ddof=1
    assert summary[1]["test_acc"][1] is None  # one seed: no spread claimed
    md = (tmp_path / "results.md").read_text()
    assert "| no_early_stop | 2 | max_epochs | 7.0 ± 0.0 | 10.5 ± 0.7 |" in md
    assert "Not finished yet: patience1/seed1" in md


def test_run_tool_measures_the_child_alone():
    import numpy as np

    ballast = np.ones(400 * 2**18)  # 800 MB in this process: not the child's
    code, wall, peak = steps.run_tool(
        ["timeit", "-n1", "-r1", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert code == 0 and wall > 0
    assert 300 <= peak < 600, peak  # the child's own peak, not this test process's
    del ballast
    code, _, _ = steps.run_tool(["json.tool", "/does/not/exist"])
    assert code != 0


def test_a_finished_step_is_not_run_again(tmp_path, monkeypatch):
    _fake_cell(tmp_path, "k4_4", 0, acc=0.8, epochs=7, wall=60.0)
    monkeypatch.setattr(steps, "run_tool", lambda args: pytest.fail(f"ran {args}"))
    studies.run_cell(str(tmp_path), studies.STUDIES["k_ratio"].variants[1], 0,
                     {"search_flagfile": "s.flags", "train_flagfile": "t.flags", "train_seed": 0})
    calls = []
    monkeypatch.setattr(steps, "run_tool", lambda args: calls.append(args) or (0, 2.0, 5.0))
    studies.run_cell(str(tmp_path), studies.STUDIES["k_ratio"].variants[0], 3,
                     {"search_flagfile": "s.flags", "train_flagfile": "t.flags", "train_seed": 0},
                     reuse=False)  # the fake search derives no genotype to look up
    assert [a[0] for a in calls] == ["ubnas_tf.cli.search", "ubnas_tf.cli.train"]
    assert "--k_normal=2" in calls[0] and "--seed=3" in calls[0] and "--seed=0" in calls[1]
    timing = json.loads((tmp_path / "k2_2" / "seed3" / "timing.json").read_text())
    assert timing["search"] == {"wall_s": 2.0, "peak_rss_mb": 5.0, "sessions": 1}


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


# 75: the tool saved its state and exited; -15: SIGTERM arrived while it was still starting,
# before its handler was installed, so it died of the signal with nothing new to save.
@pytest.mark.parametrize("code", [steps.STOPPED_BY_SIGTERM, -signal.SIGTERM])
def test_a_tool_stopped_by_sigterm_counts_its_session_and_stops_the_study(tmp_path, monkeypatch,
                                                                          code):
    monkeypatch.setattr(steps, "run_tool", lambda args: (code, 40.0, 7.0))
    with pytest.raises(StepStopped, match="k2_2, seed 0: the search stopped on SIGTERM"):
        studies.run_cell(str(tmp_path), studies.STUDIES["k_ratio"].variants[0], 0,
                         {"search_flagfile": "s.flags", "train_flagfile": "t.flags",
                          "train_seed": 0})
    timing = json.loads((tmp_path / "k2_2" / "seed0" / "timing.json").read_text())
    assert timing["search"] == {"wall_s": 40.0, "peak_rss_mb": 7.0, "sessions": 1}
    assert "train" not in timing  # the retraining did not start


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


def _searched_cell(out: Path, variant: str, seed: int, genotype: int) -> None:
    """A cell whose search has finished and whose retraining has not started."""
    _fake_cell(out, variant, seed, acc=0.0, epochs=5, wall=300.0, genotype=genotype)
    for name in ("state.json", "summary.json"):
        (out / variant / f"seed{seed}" / "train" / name).unlink()
    (out / variant / f"seed{seed}" / "train").rmdir()


def test_genotype_id_names_the_genotype_not_its_file(tmp_path):
    g = random_genotype(DEFAULT_PRIMITIVES, rng=3)
    g.save(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps(g.to_dict(), separators=(",", ":")))
    random_genotype(DEFAULT_PRIMITIVES, rng=4).save(tmp_path / "c.json")
    ids = [studies.genotype_id(str(tmp_path / f"{n}.json")) for n in "abc"]
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 8


def test_a_genotype_already_retrained_in_the_study_is_shared_not_retrained(tmp_path, monkeypatch):
    settings = {"seeds": ["0", "1"], "search_flagfile": "s.flags", "train_flagfile": "t.flags",
                "train_seed": 0}
    variants = studies.STUDIES["early_stopping"].variants  # no_early_stop, patience1, ...
    _fake_cell(tmp_path, "no_early_stop", 0, acc=0.85, epochs=7, wall=420.0, genotype=7)
    _searched_cell(tmp_path, "patience1", 0, genotype=7)  # the same genotype, found sooner
    _searched_cell(tmp_path, "patience1", 1, genotype=8)  # another one
    calls = []
    monkeypatch.setattr(steps, "run_tool", lambda args: calls.append(args) or (0, 60.0, 5.0))

    studies.run_cell(str(tmp_path), variants[1], 0, settings)
    assert calls == []  # neither searched nor retrained again
    shared = json.loads((tmp_path / "patience1" / "seed0" / studies.REUSED).read_text())
    assert shared["cell"] == os.path.join("no_early_stop", "seed0")
    studies.run_cell(str(tmp_path), variants[1], 1, settings)
    assert [a[0] for a in calls] == ["ubnas_tf.cli.train"]  # a new genotype is retrained

    rows, _, pending = studies.write_results(str(tmp_path), "early_stopping", settings)
    row = {(r["variant"], r["seed"]): r for r in rows}[("patience1", 0)]
    assert row["test_acc"] == 0.85 and row["train_min"] == 9.0  # the source cell's retraining
    assert row["search_min"] == 5.0 and row["epochs_run"] == 5  # its own search
    assert row["retrained_in"] == os.path.join("no_early_stop", "seed0")
    assert row["genotype"] == studies.genotype_id(
        str(tmp_path / "no_early_stop" / "seed0" / "search" / "genotype.json"))
    assert "patience1/seed1" in pending  # its fake retraining wrote no summary

    calls.clear()
    _searched_cell(tmp_path, "patience2", 0, genotype=7)
    studies.run_cell(str(tmp_path), variants[2], 0, settings, reuse=False)
    assert [a[0] for a in calls] == ["ubnas_tf.cli.train"]
    assert not (tmp_path / "patience2" / "seed0" / studies.REUSED).exists()


def test_module_structure_variants_search_and_retrain_with_the_structure(tmp_path, monkeypatch):
    from ubnas_tf.modules import MODULE_CONFIGS

    variants = {v.name: v for v in studies.STUDIES["module_structure"].variants}
    assert list(variants) == list(MODULE_CONFIGS)
    for name, v in variants.items():
        assert v.overrides == v.train_overrides == {"module_config": name}
    settings = {"seeds": ["0"], "search_flagfile": "s.flags", "train_flagfile": "t.flags",
                "train_seed": 0, "variants": ["universal", "reactnet"]}
    calls = []

    def tool(args):  # a search leaves its genotype behind, as the real one does
        calls.append(args)
        if args[0] == "ubnas_tf.cli.search":
            out = Path(next(a for a in args if a.startswith("--output_dir=")).split("=", 1)[1])
            random_genotype(DEFAULT_PRIMITIVES, rng=3).save(out / "genotype.json")
        return 0, 60.0, 5.0

    monkeypatch.setattr(steps, "run_tool", tool)
    studies.run_cell(str(tmp_path), variants["reactnet"], 0, settings)
    assert [a[0] for a in calls] == ["ubnas_tf.cli.search", "ubnas_tf.cli.train"]
    assert all("--module_config=reactnet" in a for a in calls)  # search and retraining

    # The same genotype retrained with another structure is not the same retraining.
    chosen = studies.chosen_variants("module_structure", settings["variants"])
    assert [v.name for v in chosen] == ["universal", "reactnet"]
    assert studies.recipe_peers(chosen, variants["reactnet"]) == {"reactnet"}
    assert studies.recipe_peers(studies.STUDIES["k_ratio"].variants,
                                studies.STUDIES["k_ratio"].variants[0]) == {
        "k2_2", "k4_4", "k8_4", "k8_8", "k4_8"}
    _fake_cell(tmp_path, "universal", 1, acc=0.85, epochs=7, wall=420.0, genotype=7)
    _searched_cell(tmp_path, "reactnet", 1, genotype=7)
    calls.clear()
    studies.run_cell(str(tmp_path), variants["reactnet"], 1, settings,
                     peers=studies.recipe_peers(chosen, variants["reactnet"]))
    assert [a[0] for a in calls] == ["ubnas_tf.cli.train"]
    assert not (tmp_path / "reactnet" / "seed1" / studies.REUSED).exists()

    # Tables show the chosen variants and any other with cells on disk.
    _fake_cell(tmp_path, "bireal", 0, acc=0.84, epochs=7, wall=400.0)
    shown = studies.reported_variants(str(tmp_path), "module_structure", ["universal"])
    assert [v.name for v in shown] == ["universal", "bireal", "reactnet"]
    with pytest.raises(studies.FlagError, match="--variants: nope is not a variant of "
                                                "--study=module_structure; its variants are "
                                                "universal, bireal"):
        studies.chosen_variants("module_structure", ["universal", "nope"])


def test_the_command_line_refuses_a_variant_of_another_study(tmp_path):
    # absl's validator, at parse time: nothing is created.
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "studies.py"), "--study=k_ratio",
         "--variants=k4_4,patience2", f"--output_dir={tmp_path / 'study'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("error: --variants: patience2 is not a variant of --study=k_ratio; its variants "
            "are k2_2, k4_4, k8_4, k8_8, k4_8") in proc.stderr
    assert not (tmp_path / "study").exists()
