"""The evidence ledger and its runner: rows, de-duplication, resume, recipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from tool_runs import REPO, SMALL_GENOTYPE_OPS, subprocess_env

from ubnas_tf.evidence.ledger import COLUMNS, Ledger, LedgerError, Recipe, genotype_hash
from ubnas_tf.evidence.runner import EvidenceRunner, SearchSpec, Trial
from ubnas_tf.genotype import Genotype, random_genotype


def _genotype(seed: int) -> Genotype:
    return random_genotype(SMALL_GENOTYPE_OPS, 4, seed)


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    # Recipes are read relative to the code's checkout: point it at a scratch one.
    root = tmp_path / "repo"
    (root / "flags").mkdir(parents=True)
    (root / "flags" / "short.flags").write_text(
        "# a comment\n--dataset=fashion_mnist\n--output_dir=runs/x\n--epochs=3\n--seed=0\n")
    monkeypatch.setattr("ubnas_tf.evidence.runner.REPO", str(root))
    return Recipe("flags/short.flags"), str(root)


class FakeTools:
    """Stands in for run_step: writes what tools/search.py and tools/train.py would write,
    and records every tool run."""

    def __init__(self, search_genotypes: dict[int, Genotype] | None = None,
                 fail_on: int | None = None):
        self.calls: list[str] = []
        self.search_genotypes = search_genotypes or {}
        self.fail_on = fail_on

    def __call__(self, cell: str, step: str, label: str, args) -> None:
        out = os.path.join(cell, step)
        if os.path.exists(os.path.join(out, "summary.json")):
            return  # finished: run_step skips it
        self.calls.append(args[0])
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise KeyboardInterrupt("killed")
        os.makedirs(out, exist_ok=True)
        flags_ = dict(a.lstrip("-").split("=", 1) for a in args[1:])
        if args[0] == "ubnas_tf.cli.search":
            self.search_genotypes[int(flags_["seed"])].save(os.path.join(out, "genotype.json"))
            summary = {}
        else:
            seed = int(flags_["seed"])
            summary = {"cost": {"ops": 1.5e6}, "best_model_test_accuracy": 0.85 + seed / 100,
                       "test_accuracy": 0.84, "best_val_accuracy": 0.86, "wall_time_s": 60.0}
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f)
        with open(os.path.join(out, "state.json"), "w") as f:
            json.dump({"finished": True}, f)


def test_a_row_is_appended_atomically_and_a_retraining_is_held_once(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.csv"))
    digest = ledger.store_genotype(_genotype(0))
    assert digest == genotype_hash(_genotype(0)) and len(digest) == 12
    assert Genotype.load(ledger.genotype_path(digest)) == _genotype(0)
    row = dict.fromkeys(COLUMNS, "")
    row.update(arm="random", genotype=digest, recipe_hash="abc", train_seed=0,
               test_accuracy=0.8512345)
    ledger.append([row])
    assert ledger.has(digest, "abc", 0) and not ledger.has(digest, "abc", 1)
    assert ledger.rows()[0]["test_accuracy"] == "0.851235"
    with pytest.raises(LedgerError, match="already holds genotype"):
        ledger.append([row])
    with pytest.raises(LedgerError, match="arm in"):
        ledger.append([{**row, "arm": "lucky", "train_seed": 1}])
    with pytest.raises(LedgerError, match="not stored beside"):
        ledger.append([{**row, "genotype": "0" * 12, "train_seed": 1}])
    assert len(ledger.rows()) == 1  # the refused rows left the file as it was
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(LedgerError, match="is not an evidence ledger"):
        Ledger(str(path)).rows()


def test_the_recipe_hash_ignores_comments_paths_and_seed_but_not_the_recipe(tmp_path):
    (tmp_path / "a.flags").write_text("--epochs=3\n--output_dir=a\n--seed=0\n--augment\n")
    (tmp_path / "b.flags").write_text("# other words\n--output_dir=b\n--augment\n--seed=4\n"
                                      "--epochs=3\n")
    (tmp_path / "c.flags").write_text("--epochs=4\n--augment\n")
    a, b, c = (Recipe(f"{n}.flags").hash(str(tmp_path)) for n in "abc")
    assert a == b != c
    # An override wins over the flagfile's value, as absl's last flag does.
    assert Recipe("c.flags", ("epochs=3",)).hash(str(tmp_path)) == a
    assert Recipe("a.flags", ("jit_compile=true",)).hash(str(tmp_path)) == a


def test_the_runner_resumes_and_never_retrains_a_held_retraining(tmp_path, recipe):
    recipe, _ = recipe
    ledger = Ledger(str(tmp_path / "evidence" / "ledger.csv"))
    trials = [Trial("random", f"draw {i}", recipe, 0, genotype=_genotype(i)) for i in range(3)]
    trials.append(Trial("random", "draw 0", recipe, 1, genotype=_genotype(0)))  # another seed
    killed = FakeTools(fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        EvidenceRunner(ledger, str(tmp_path / "work"), step=killed).run(trials)
    assert len(ledger.rows()) == 2  # the two that finished before the kill

    tools = FakeTools()
    added = EvidenceRunner(ledger, str(tmp_path / "work"), step=tools).run(trials)
    assert added == 2 and tools.calls == ["ubnas_tf.cli.train"] * 2
    rows = ledger.rows()
    assert [(r["origin"], r["train_seed"]) for r in rows] == [
        ("draw 0", "0"), ("draw 1", "0"), ("draw 2", "0"), ("draw 0", "1")]
    assert rows[3]["test_accuracy"] == "0.860000" and rows[0]["mops"] == "1.5"
    assert rows[0]["recipe"] == "flags/short.flags" and rows[0]["commit"]

    again = FakeTools()
    assert EvidenceRunner(ledger, str(tmp_path / "work"), step=again).run(trials) == 0
    assert again.calls == [] and len(ledger.rows()) == 4


def test_a_searched_trial_is_skipped_before_searching_and_shares_a_held_genotype(tmp_path, recipe):
    recipe, _ = recipe
    ledger = Ledger(str(tmp_path / "ledger.csv"))
    g = _genotype(7)
    specs = [SearchSpec("flags/search.flags", s) for s in (0, 1)]
    trials = [Trial("searched", str(spec), recipe, 0, search=spec) for spec in specs]
    tools = FakeTools({0: g, 1: g})  # both seeds derive the same genotype
    assert EvidenceRunner(ledger, str(tmp_path / "work"), step=tools).run(trials) == 2
    assert tools.calls == ["ubnas_tf.cli.search", "ubnas_tf.cli.train", "ubnas_tf.cli.search"]
    assert [r["origin"] for r in ledger.rows()] == ["flags/search.flags --seed=0"]

    again = FakeTools({0: g, 1: g})
    EvidenceRunner(ledger, str(tmp_path / "work"), step=again).run(trials[:1])
    assert again.calls == []  # held by its origin: not even searched


def test_a_trial_needs_an_arm_and_one_source(recipe):
    recipe, _ = recipe
    with pytest.raises(ValueError, match="arm must be one of"):
        Trial("lucky", "x", recipe, 0, genotype=_genotype(0))
    with pytest.raises(ValueError, match="either a genotype or a search"):
        Trial("random", "x", recipe, 0)


def _evidence(*args: str, cwd=None):
    return subprocess.run([sys.executable, str(REPO / "tools" / "evidence.py"), *args],
                          cwd=cwd or REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def test_the_evidence_tool_refuses_bad_input_in_one_line_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    cases = [
        (("run", f"--work_dir={tmp_path}/file/runs"),
         "--work_dir='" + f"{tmp_path}/file/runs' cannot be created: '{tmp_path}/file' is a file"),
        (("run", "--recipe=flags/none.flags", f"--work_dir={tmp_path}/w"),
         "--recipe=flags/none.flags is not a flagfile"),
        (("run", f"--ledger={tmp_path}/other.csv", f"--work_dir={tmp_path}/w", "--arms=hand"),
         "is not an evidence ledger"),
        (("run", "--search_overrides=k_normal=8", f"--work_dir={tmp_path}/w"),
         "--search_overrides needs a --variant name"),
        (("dance",), "give one command, run or report or oneshot"),
        (("oneshot", f"--search_dir={tmp_path}"), "is not a finished tools/search.py run"),
    ]
    for args, message in cases:
        proc = _evidence(*args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr[-2000:])
    assert not (tmp_path / "w").exists()  # refused before any work


def test_the_evidence_report_is_computed_from_the_ledger_alone(tmp_path):
    ledger = tmp_path / "ledger.csv"
    shutil.copy(REPO / "docs" / "evidence" / "ledger.csv", ledger)
    proc = _evidence("report", f"--ledger={ledger}", f"--output={tmp_path}/report.md")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| searched |" in proc.stdout and "(hash `ce66c4207a`)" in proc.stdout
    assert (tmp_path / "report.md").read_text() == proc.stdout
