"""The one resumable runner of the evidence ledger: search if needed, retrain, append, commit.

An experiment is a list of `Trial`s. A trial names its arm, where its genotype comes from
(a genotype in hand: a random draw or a hand design; or a `SearchSpec`: a search flagfile,
its overrides and a search seed), the retraining `Recipe` and a training seed. The runner
skips every trial the ledger already holds (by genotype, recipe hash and training seed; a
search trial by its origin, before searching), runs the rest with the committed tools as
subprocesses (`tools/search.py`, `tools/train.py`, whose run directories resume after a
kill), and appends one ledger row as each retraining finishes, committing it with git when
asked. Killed at any point and re-run, it loses nothing that had finished.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from ubnas_tf.errors import StepStopped
from ubnas_tf.evidence.ledger import ARMS, Ledger, Recipe, genotype_hash, origin_text
from ubnas_tf.evidence.steps import REPO, STOPPED_BY_SIGTERM, finished, run_step
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import read_json

__all__ = ["EvidenceRunner", "SearchSpec", "Trial", "code_commit", "exit_status_of_run",
           "ledger_row"]


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A search: `tools/search.py --flagfile=FLAGFILE --OVERRIDE... --seed=SEED`."""

    flagfile: str
    seed: int
    overrides: tuple[str, ...] = ()

    def __str__(self) -> str:
        return origin_text([self.flagfile, *(f"--{o}" for o in self.overrides),
                            f"--seed={self.seed}"])

    @property
    def name(self) -> str:
        stem = os.path.splitext(os.path.basename(self.flagfile))[0]
        extra = "_".join(o.replace("=", "-") for o in self.overrides)
        return "_".join(p for p in (stem, extra, f"seed{self.seed}") if p)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One retraining to add to the ledger (and the search before it, if any)."""

    arm: str
    origin: str
    recipe: Recipe
    train_seed: int
    genotype: Genotype | None = None
    search: SearchSpec | None = None
    variant: str = ""

    def __post_init__(self):
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        if (self.genotype is None) == (self.search is None):
            raise ValueError("a trial has either a genotype or a search, not both or neither")

    @property
    def label(self) -> str:
        what = f"{self.arm}{':' + self.variant if self.variant else ''}"
        return f"{what} {self.origin}, training seed {self.train_seed}"


def code_commit(root: str = REPO) -> str:
    """The short commit of the checkout the code runs from (``unknown`` outside git)."""
    out = subprocess.run(["git", "-C", root, "rev-parse", "--short=8", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def ledger_row(trial: Trial, genotype: str, recipe_hash: str, summary: dict,
               commit: str) -> dict:
    """The ledger row of `trial`'s finished retraining (its tools/train.py summary.json)."""
    return {
        "arm": trial.arm, "variant": trial.variant, "genotype": genotype,
        "origin": trial.origin, "mops": summary["cost"]["ops"] / 1e6,
        "recipe": str(trial.recipe), "recipe_hash": recipe_hash,
        "train_seed": trial.train_seed,
        "test_accuracy": summary["best_model_test_accuracy"],
        "final_test_accuracy": summary["test_accuracy"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "wall_time_s": summary["wall_time_s"], "commit": commit,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class EvidenceRunner:
    """Runs trials into `ledger`; searches and retrainings go under `work_dir`.

    Args:
        ledger: the ledger to read and append to.
        work_dir: run directories (``search/NAME``, ``train/GENOTYPE_RECIPE_sSEED``); not
            committed: a later session on another machine only needs the ledger.
        commit: after each row, ``git commit`` the ledger and its genotype files in the
            repository that holds the ledger.
        tool: runs ``python -m ARGS`` in the code's checkout (default
            `ubnas_tf.evidence.steps.run_step`'s subprocess); tests pass a fake.
    """

    def __init__(self, ledger: Ledger, work_dir: str, commit: bool = False,
                 step: Callable[[str, str, str, Sequence[str]], None] = run_step):
        self.ledger = ledger
        self.work_dir = os.path.abspath(work_dir)
        self.commit = commit
        self.step = step

    def pending(self, trials: Sequence[Trial]) -> list[Trial]:
        """The trials the ledger does not hold yet, in order."""
        return [t for t in trials if not self._held(t)]

    def _held(self, trial: Trial) -> bool:
        recipe_hash = trial.recipe.hash(REPO)
        if trial.genotype is not None:
            return self.ledger.has(genotype_hash(trial.genotype), recipe_hash, trial.train_seed)
        return bool(self.ledger.find(origin=trial.origin, recipe_hash=recipe_hash,
                                     train_seed=trial.train_seed))

    def run(self, trials: Sequence[Trial]) -> int:
        """Runs the pending trials; returns how many rows were added. Raises
        `ubnas_tf.errors.StepStopped` when a tool stopped on SIGTERM (its state
        saved: re-run to resume)."""
        todo = self.pending(trials)
        print(f"{len(trials) - len(todo)} of {len(trials)} trials are in {self.ledger.path}; "
              f"{len(todo)} to run.", flush=True)
        for i, trial in enumerate(todo, 1):
            print(f"\n##### trial {i}/{len(todo)}: {trial.label}", flush=True)
            genotype = trial.genotype if trial.genotype is not None else self._search(trial)
            digest = self.ledger.store_genotype(genotype)
            recipe_hash = trial.recipe.hash(REPO)
            if self.ledger.has(digest, recipe_hash, trial.train_seed):
                # A search that derived a genotype the ledger already holds: nothing to train.
                print(f"genotype {digest} is already retrained with this recipe and seed.",
                      flush=True)
                continue
            summary = self._train(trial, digest, recipe_hash)
            row = ledger_row(trial, digest, recipe_hash, summary, code_commit())
            self.ledger.append([row])
            print(f"ledger += {trial.arm} {digest}: {row['test_accuracy']:.4f} "
                  f"({row['mops']:.3f} MOPs)", flush=True)
            if self.commit:
                self._commit(f"evidence: {trial.arm}{':' + trial.variant if trial.variant else ''}"
                             f" {digest} {row['test_accuracy'] * 100:.2f} % "
                             f"({row['mops']:.3f} MOPs, training seed {trial.train_seed})")
        return len(todo)

    def _search(self, trial: Trial) -> Genotype:
        spec = trial.search
        out = os.path.join(self.work_dir, "search", spec.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.step(os.path.dirname(out), spec.name, f"search {spec}",
                  ["ubnas_tf.cli.search", f"--flagfile={spec.flagfile}",
                   *(f"--{o}" for o in spec.overrides), f"--seed={spec.seed}",
                   f"--output_dir={out}"])
        return Genotype.load(os.path.join(out, "genotype.json"))

    def _train(self, trial: Trial, digest: str, recipe_hash: str) -> dict:
        name = f"{digest}_{recipe_hash}_s{trial.train_seed}"
        out = os.path.join(self.work_dir, "train", name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.step(os.path.dirname(out), name, f"retrain {digest}",
                  ["ubnas_tf.cli.train", f"--flagfile={trial.recipe.flagfile}",
                   *(f"--{o}" for o in trial.recipe.overrides),
                   f"--genotype={self.ledger.genotype_path(digest)}",
                   f"--seed={trial.train_seed}", f"--output_dir={out}"])
        if not finished(out):
            raise RuntimeError(f"the retraining in {out} did not finish")
        return read_json(os.path.join(out, "summary.json"))

    def _commit(self, message: str) -> None:
        root = self.ledger.directory
        # The ledger, its genotypes, and the random draws that chose them.
        paths = [p for p in (self.ledger.path, os.path.join(self.ledger.directory, "genotypes"),
                             os.path.join(self.ledger.directory, "draws.json"))
                 if os.path.exists(p)]
        add = subprocess.run(["git", "-C", root, "add", "--", *paths], capture_output=True,
                             text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "-C", root, "commit", "-q", "-m", message, "--", *paths],
            capture_output=True, text=True).returncode == 0
        if not done:
            print(f"WARNING: could not commit the ledger ({message}); it is written, commit it "
                  "by hand.", file=sys.stderr, flush=True)


def exit_status_of_run(runner: EvidenceRunner, trials: Sequence[Trial], prog: str) -> int:
    """Runs `trials` as a command does: 0 when all finished; `STOPPED_BY_SIGTERM` (75) after a
    one-line "stopped ... re-run" when a tool stopped on SIGTERM; 1 after a one-line error
    when a tool failed."""
    try:
        runner.run(trials)
    except StepStopped as err:
        print(f"{prog}: stopped: {err}; re-run the same command to resume.", file=sys.stderr)
        return STOPPED_BY_SIGTERM
    except RuntimeError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    return 0
