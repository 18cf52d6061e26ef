"""The paper's search studies, measured: channel sampling ratio K, early stopping, and the
module structures confirmed by a real search and retraining.

    python benchmarks/studies.py --study=k_ratio
    python benchmarks/studies.py --study=early_stopping --seeds=0,1
    python benchmarks/studies.py --study=module_structure --variants=universal,reactnet

A study is a grid of variants (flag overrides of one search flagfile, default the quick start
`flags/fashion_mnist.flags`, and for the module structures of the retraining too) times
search seeds; `--variants` runs some of a study's variants. It is an experiment definition on
the evidence runner (`ubnas_tf.evidence.runner`): each cell of the grid is one trial of the
``searched`` arm, whose variant is ``STUDY:VARIANT`` and whose origin is its search
(``FLAGFILE --OVERRIDE... --seed=S``). The runner runs `tools/search.py` and retrains the
derived genotype with one fixed short recipe (`--train_flagfile`, default
`flags/fashion_mnist_short_train.flags`, plus the variant's retraining overrides) and
training seed (`--train_seed`), both as subprocesses of the committed tools, and appends one
row per retraining to the evidence ledger (`--ledger`, default the committed
docs/evidence/ledger.csv; `--commit` commits it after every row).

The ledger holds a retraining once, by (genotype, recipe hash, training seed): a cell whose
search the ledger already holds is not searched again, and a search that derives a genotype
the ledger already holds with this recipe and seed (from another cell, study or experiment)
is not retrained; the cell's figures are that row's. Killed at any point (SIGTERM: the tools
save their state, and the study exits 75), the same command resumes: what finished is in the
ledger or in the run directories under `--work_dir` (default `runs/studies`; not committed:
`search/NAME/`, `search/timing.json`, `train/GENOTYPE_RECIPE_sSEED/`), and a half-finished
search or retraining resumes from its last epoch.

Recorded per cell, from the search's run directory: the search's wall time and peak resident
memory (`search/timing.json`: the tool process's own `VmHWM`; a resumed search counts the sum
of its sessions' wall times and the largest of their peaks), epochs run and why it stopped,
images/s and how decided the architecture is (`op_max_kept`, its `summary.json`); from the
genotype's ledger row: the retrained network's MOPs (BOPs/64 + FLOPs, as `tools/summary.py`
counts them), its test accuracy (best-validation model, whole test set) and the retraining's
wall time. The tables, per cell and mean +- sample std per variant, are printed and written
to `--work_dir/STUDY/results.md` and `results.csv` at the end of every session.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.config import option, required
from ubnas_tf.errors import FlagError
from ubnas_tf.evidence.ledger import Ledger, LedgerError, Recipe, genotype_hash
from ubnas_tf.evidence.options import (
    DEFAULT_RECIPE,
    DEFAULT_SEARCH,
    commit_option,
    ledger_option,
    train_seed_option,
)
from ubnas_tf.evidence.report import arm_key
from ubnas_tf.evidence.runner import EvidenceRunner, SearchSpec, Trial, exit_status_of_run
from ubnas_tf.evidence.steps import REPO, finished, repo_path
from ubnas_tf.flags import (
    check_output_dir,
    config_from_flags,
    define_config_flags,
    program_name,
    run_main,
)
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_text, read_json
from ubnas_tf.modules import MODULE_CONFIGS
from ubnas_tf.tables import markdown_table, mean_std, text_table

ARM = "searched"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict  # search flag -> value
    # retraining flag -> value (the module structure must be the same in both)
    train_overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Study:
    question: str
    variants: tuple[Variant, ...]


def _k(normal: int, reduce: int) -> Variant:
    return Variant(f"k{normal}_{reduce}", {"k_normal": normal, "k_reduce": reduce})


def _patience(p: int) -> Variant:
    return Variant("no_early_stop" if p == 0 else f"patience{p}", {"patience": p})


def _module(name: str) -> Variant:
    return Variant(name, {"module_config": name}, {"module_config": name})


STUDIES: dict[str, Study] = {
    "k_ratio": Study(
        "Channel sampling ratio K per cell type (1/K of the channels go through the mixed op): "
        "search time, peak memory, decisiveness, derived OPs and retrained accuracy. "
        "(8, 4) and (4, 8) swap which cell type samples harder.",
        (_k(2, 2), _k(4, 4), _k(8, 4), _k(8, 8), _k(4, 8))),
    "early_stopping": Study(
        "The same search with and without early stopping (two patience values): epochs and "
        "wall time saved, and the retrained accuracy of each derived genotype.",
        (_patience(0), _patience(1), _patience(2), _patience(3))),
    "module_structure": Study(
        "Module structures (ubnas_tf.modules.MODULE_CONFIGS) in the product itself: the "
        "budgeted search and the fixed retraining, both with the structure, so that a lead "
        "found by tools/compare_modules.py's short proxy is confirmed (or not) at equal OPs.",
        tuple(_module(name) for name in MODULE_CONFIGS)),
}

COLUMNS = ("variant", "seed", "epochs_run", "stop_reason", "search_min", "peak_rss_mb",
           "images_per_s", "op_max_kept", "mops", "test_acc", "train_min", "genotype",
           "retrained_for")
NUMERIC = ("epochs_run", "search_min", "peak_rss_mb", "images_per_s", "op_max_kept", "mops",
           "test_acc", "train_min")
DIGITS = {"search_min": 1, "peak_rss_mb": 0, "images_per_s": 1, "op_max_kept": 3, "mops": 3,
          "test_acc": 4, "train_min": 1, "epochs_run": 1}
ITSELF = "itself"  # `retrained_for` of a cell whose own trial added the row

FLAGS = flags.FLAGS


# -- settings and trials -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """A study's command line: each field is a flag. Flagfiles are relative to the code's
    checkout (`REPO`) when they lie inside it, as the tools are run there; `variants` None
    means all of them."""

    study: str = required("The study to run.", choices=tuple(STUDIES))
    seeds: tuple[int, ...] = option((0,), "Search seeds; every variant is searched once per "
                                          "seed.", lower_bound=0, upper_bound=2**32 - 1)
    variants: tuple[str, ...] | None = option(
        None, "Run only these of the study's variants (default: all of them); more can be "
              "added later (the tables show every variant of the study that has finished "
              "cells).")
    search_flagfile: str = option(
        DEFAULT_SEARCH, "The search every variant starts from (its --output_dir and --seed are "
                        "replaced); relative to the working directory or this checkout.")
    train_flagfile: str = option(
        DEFAULT_RECIPE, "The fixed retraining recipe (its --output_dir, --genotype and --seed "
                        "are replaced); relative to the working directory or this checkout.")
    train_seed: int = train_seed_option("Seed of every retraining (the same for all cells).")
    ledger: str = ledger_option()
    work_dir: str = option("runs/studies", "Run directories of the searches and retrainings "
                                           "(not committed; the ledger is), and the tables "
                                           "(STUDY/results.md, STUDY/results.csv).")
    commit: bool = commit_option()

    @property
    def results_dir(self) -> str:
        return os.path.join(os.path.abspath(self.work_dir), self.study)


def chosen_variants(study: str, names: Sequence[str] | None = None) -> tuple[Variant, ...]:
    """The study's variants named in `names` (default all), in the study's order."""
    if study not in STUDIES:
        raise FlagError(f"--study={study!r} is not a study; use one of {', '.join(STUDIES)}.")
    variants = STUDIES[study].variants
    if not names:
        return variants
    known = [v.name for v in variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FlagError(f"--variants: {', '.join(unknown)} is not a variant of --study={study}; "
                        f"its variants are {', '.join(known)}.")
    return tuple(v for v in variants if v.name in names)


def _variants_of_the_study(values: dict) -> bool:
    """The --variants validator: each must be a variant of --study (the message lists them)."""
    if values["study"] in STUDIES:
        try:
            chosen_variants(values["study"], values["variants"])
        except FlagError as err:
            raise flags.ValidationError(str(err)) from err
    return True


def _assignments(overrides: dict) -> tuple[str, ...]:
    return tuple(f"{k}={v}" for k, v in overrides.items())


def cell_trial(settings: Settings, variant: Variant, seed: int) -> Trial:
    """The trial of one cell: the variant's search at `seed`, retrained with the recipe."""
    spec = SearchSpec(settings.search_flagfile, seed, _assignments(variant.overrides))
    recipe = Recipe(settings.train_flagfile, _assignments(variant.train_overrides))
    return Trial(ARM, str(spec), recipe, settings.train_seed, search=spec,
                 variant=f"{settings.study}:{variant.name}")


def study_trials(settings: Settings) -> list[Trial]:
    """The trials of the chosen variants times the seeds, variant by variant."""
    return [cell_trial(settings, v, seed)
            for v in chosen_variants(settings.study, settings.variants)
            for seed in settings.seeds]


def _flagfile(path: str) -> str:
    """A flagfile given on the command line: a file relative to the working directory, else
    (such as the defaults, from another directory) relative to the code's checkout."""
    return repo_path(path) if os.path.isfile(path) else path


def check(settings: Settings) -> Ledger:
    """Checks what the flag validators cannot; returns the ledger. Raises FlagError naming
    the flag, before any work."""
    chosen_variants(settings.study, settings.variants)
    if not settings.seeds or any(not 0 <= s < 2**32 for s in settings.seeds):
        raise FlagError(f"--seeds={','.join(map(str, settings.seeds))} must be integers in "
                        "[0, 2**32-1], e.g. 0,1.")
    for flag in ("search_flagfile", "train_flagfile"):
        path = getattr(settings, flag)
        if not os.path.isfile(os.path.join(REPO, path)):
            where = "" if os.path.isabs(path) else f" in the working directory or in {REPO}"
            raise FlagError(f"--{flag}={path} is not a flagfile{where}.")
    check_output_dir(settings.work_dir, "--work_dir")
    check_output_dir(os.path.dirname(os.path.abspath(settings.ledger)), "--ledger's directory")
    if os.path.isdir(settings.ledger):
        raise FlagError(f"--ledger={settings.ledger} is a directory, not a ledger file.")
    ledger = Ledger(settings.ledger)
    try:
        ledger.rows()  # a file that is not a ledger is refused before any work
    except (LedgerError, UnicodeDecodeError, csv.Error) as err:
        raise FlagError(f"--ledger={settings.ledger}: {err}".splitlines()[0]) from err
    return ledger


# -- results -----------------------------------------------------------------------------------


def _number(value) -> float | None:
    return None if value is None else float(value)


def cell_row(settings: Settings, ledger: Ledger, variant: Variant, seed: int) -> dict | None:
    """The figures of a cell whose genotype the ledger holds (with the cell's recipe and
    training seed), else None. The search's figures come from its run directory under
    --work_dir (None where it is not there, e.g. in another checkout); the retraining's from
    the ledger row, whichever trial added it."""
    trial = cell_trial(settings, variant, seed)
    recipe_hash = trial.recipe.hash(REPO)
    search_dir = os.path.join(os.path.abspath(settings.work_dir), "search", trial.search.name)
    if finished(search_dir):
        digest = genotype_hash(Genotype.load(os.path.join(search_dir, "genotype.json")))
        rows = ledger.find(genotype=digest, recipe_hash=recipe_hash, train_seed=trial.train_seed)
    else:  # the run directory is elsewhere: the ledger row of the cell's own trial, if any
        rows = ledger.find(origin=trial.origin, recipe_hash=recipe_hash,
                           train_seed=trial.train_seed)
    if not rows:
        return None
    row = rows[0]
    s = read_json(os.path.join(search_dir, "summary.json")) if finished(search_dir) else {}
    timing_path = os.path.join(os.path.dirname(search_dir), "timing.json")
    timing = (read_json(timing_path) if os.path.exists(timing_path) else {}).get(
        trial.search.name, {})
    own = row["origin"] == trial.origin and row["variant"] == trial.variant
    return {
        "variant": variant.name, "seed": seed, "epochs_run": s.get("epochs_run"),
        "stop_reason": s.get("stop_reason", "-"),
        "search_min": timing["wall_s"] / 60 if "wall_s" in timing else None,
        "peak_rss_mb": timing.get("peak_rss_mb") or None,
        "images_per_s": s.get("images_per_second"),
        "op_max_kept": (s.get("decisiveness") or {}).get("op_max_kept"),
        "mops": float(row["mops"]),
        "test_acc": float(row["test_accuracy"]),
        "train_min": float(row["wall_time_s"]) / 60 if row["wall_time_s"] else None,
        "genotype": row["genotype"],
        "retrained_for": ITSELF if own else f"{arm_key(row)} {row['origin']}",
    }


def summarise(rows: Sequence[dict], variants: Sequence[Variant]) -> list[dict]:
    """Per variant: n, and mean and sample std (ddof=1; None with one value) of each figure
    over the cells that have it ((None, None) if none has)."""
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.name]
        if not mine:
            continue
        agg = {"variant": v.name, "n": len(mine),
               "stop_reasons": "/".join(sorted({r["stop_reason"] for r in mine}))}
        for col in NUMERIC:
            values = [float(r[col]) for r in mine if r[col] is not None]
            agg[col] = mean_std(values) if values else (None, None)
        out.append(agg)
    return out


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(settings: Settings, rows: Sequence[dict], summary: Sequence[dict],
             pending: Sequence[str]) -> str:
    def ms(pair, digits):
        mean, std = pair
        return _fmt(mean, digits) + ("" if std is None else f" ± {_fmt(std, digits)}")

    parts = [f"# Study `{settings.study}`", "", STUDIES[settings.study].question, "",
             f"Search: `{settings.search_flagfile}` with the variant's flags, seeds "
             f"{', '.join(map(str, settings.seeds))}; retraining: `{settings.train_flagfile}` "
             "with the variant's retraining flags (if any), seed "
             f"{settings.train_seed}. Search figures from the search's run directory (wall "
             "times on this machine, the sum over sessions if it was resumed); MOPs (BOPs/64 + "
             "FLOPs of the retrained network), test accuracy (of the best-validation model on "
             "the whole test set) and the retraining's wall time (of the session that finished "
             f"it) from the evidence ledger `{repo_path(settings.ledger)}`. `genotype` is the "
             "ledger's hash of the derived genotype; a genotype is retrained once per recipe "
             f"and seed, and `retrained_for` names the ledger row's trial when it is not the "
             "cell's own (\"itself\").", "",
             "## Per variant (mean ± sample std over seeds)", ""]
    header = ["variant", "n", "stop", *NUMERIC]
    parts.append(markdown_table(header, [
        [a["variant"], a["n"], a["stop_reasons"], *(ms(a[c], DIGITS[c]) for c in NUMERIC)]
        for a in summary]))
    parts += ["", "## Per run", ""]
    parts.append(markdown_table(COLUMNS, [
        [r["variant"], r["seed"], "-" if r["epochs_run"] is None else r["epochs_run"],
         r["stop_reason"], *(_fmt(r[c], DIGITS[c]) for c in NUMERIC if c != "epochs_run"),
         r["genotype"], r["retrained_for"]]
        for r in rows]))
    if pending:
        parts += ["", "Not finished yet: " + ", ".join(pending) + "."]
    return "\n".join(parts) + "\n"


def write_results(settings: Settings,
                  ledger: Ledger) -> tuple[list[dict], list[dict], list[str]]:
    """Writes results.csv and results.md in `settings.results_dir`; returns the rows, the
    per-variant summary and the cells not finished yet. The tables show the chosen variants
    and any other of the study with a finished cell at these seeds (run by an earlier command
    with other --variants)."""
    chosen = chosen_variants(settings.study, settings.variants)
    rows, pending, shown = [], [], []
    for v in STUDIES[settings.study].variants:
        cells = [(seed, cell_row(settings, ledger, v, seed)) for seed in settings.seeds]
        if v not in chosen and all(row is None for _, row in cells):
            continue
        shown.append(v)
        for seed, row in cells:
            if row is None:
                pending.append(f"{v.name}/seed{seed}")
            else:
                rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    os.makedirs(settings.results_dir, exist_ok=True)
    atomic_write_text(os.path.join(settings.results_dir, "results.csv"), buf.getvalue())
    summary = summarise(rows, shown)
    atomic_write_text(os.path.join(settings.results_dir, "results.md"),
                      markdown(settings, rows, summary, pending))
    return rows, summary, pending


# -- the command -------------------------------------------------------------------------------


def run_study(settings: Settings, step: Callable | None = None) -> int:
    """Runs the study (the cells the ledger does not hold), writes and prints its tables;
    returns the exit status: 0 when every cell is in the ledger, 2 for bad input (nothing
    done), 75 when a tool stopped on SIGTERM (re-run to resume), 1 otherwise. `step` replaces
    the runner's tool step (tests)."""
    prog = program_name()
    try:
        ledger = check(settings)
        trials = study_trials(settings)
    except (FlagError, LedgerError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"Study {settings.study}: {STUDIES[settings.study].question}\nRuns in "
          f"{os.path.abspath(settings.work_dir)}, rows in {ledger.path}", flush=True)
    runner = EvidenceRunner(ledger, settings.work_dir, settings.commit,
                            **({"step": step} if step is not None else {}))
    code = exit_status_of_run(runner, trials, prog)
    _, summary, pending = write_results(settings, ledger)
    print()
    if summary:
        print(text_table(["variant", "n", "stop", *NUMERIC],
                         [[a["variant"], str(a["n"]), a["stop_reasons"],
                           *(_fmt(a[c][0], DIGITS[c]) for c in NUMERIC)] for a in summary]))
    else:
        print("No cell of the study has finished yet.")
    out = settings.results_dir
    print(f"\nMeans over seeds; standard deviations in {os.path.join(out, 'results.md')} "
          f"and every run in {os.path.join(out, 'results.csv')}."
          + (f" Not finished yet: {', '.join(pending)}." if pending else ""))
    return code or (1 if pending else 0)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the study's absl flags, `Settings`' options (called when run as a script, not
    on import)."""
    define_config_flags(Settings, flag_values)
    # list them under --help, not only --helpfull
    flags.adopt_module_key_flags(ub_flags, flag_values)
    flags.mark_flag_as_required("study", flag_values=flag_values)
    flags.register_multi_flags_validator(["study", "variants"], _variants_of_the_study,
                                         flag_values=flag_values)


def settings_from_flags(flag_values: flags.FlagValues = FLAGS) -> Settings:
    """The study's `Settings` from the command line in one call, read as a command line
    means them: a seed given twice is searched once, and a flagfile is looked for in the
    working directory first (`_flagfile`)."""
    settings = config_from_flags(Settings, flag_values)
    return dataclasses.replace(settings, seeds=tuple(dict.fromkeys(settings.seeds)),
                               search_flagfile=_flagfile(settings.search_flagfile),
                               train_flagfile=_flagfile(settings.train_flagfile))


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_study(settings_from_flags())


def run() -> None:
    """The ``ubnas-studies`` console script (and ``python benchmarks/studies.py``)."""
    define_flags()
    run_main(__name__, main)


if __name__ == "__main__":
    run()
