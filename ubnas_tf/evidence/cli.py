"""Fill and read the evidence ledger: does the search beat chance at equal OPs?

    python tools/evidence.py run --arms=random,hand,searched,noise --commit
    python tools/evidence.py report [--output=docs/evidence/report.md]

``run`` retrains what the ledger does not hold yet (see `ubnas_tf.evidence.chance`), one row
per finished retraining; killed and re-run, it goes on where it stopped. ``report`` prints
the comparison from the ledger alone, without training. ``oneshot --search_dir=RUN`` asks
the trained supernet of a finished search what it thinks of the ledger's random genotypes
(one-shot accuracy and log-probability, `ubnas_tf.search.one_shot`) and adds them to
``one_shot.csv`` beside the ledger; ``report`` then gives their rank agreement with the
retrained accuracies.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys

from absl import flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.config import option
from ubnas_tf.evidence.chance import CHANCE_ARMS, ChanceSettings, chance_trials
from ubnas_tf.evidence.ledger import Ledger, LedgerError
from ubnas_tf.evidence.options import commit_option, ledger_option, metric_option
from ubnas_tf.evidence.runner import EvidenceRunner, exit_status_of_run
from ubnas_tf.evidence.steps import REPO
from ubnas_tf.flags import (
    check_output_dir,
    config_from_flags,
    define_config_flags,
    program_name,
    run_main,
)
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_text
from ubnas_tf.search.one_shot import genotype_log_prob, load_supernet, one_shot_accuracy

FLAGS = flags.FLAGS
COMMANDS = ("run", "report", "oneshot")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvidenceConfig(ChanceSettings):
    """The command line: the experiment (`ChanceSettings`), where its retrainings go and
    which arms run now, and what ``report`` and ``oneshot`` read and write."""

    ledger: str = ledger_option()
    work_dir: str = option("runs/evidence", "Run directories of the searches and retrainings "
                                            "(not committed; only the ledger is).")
    arms: tuple[str, ...] = option(CHANCE_ARMS, "Arms to run, in this order: "
                                                f"{', '.join(CHANCE_ARMS)}.")
    commit: bool = commit_option()
    output: str | None = option(None, "report: also write the markdown to this file.")
    readme: str | None = option(None, "report: regenerate the evidence section of this README "
                                      "(between its evidence markers).")
    metric: str = metric_option("report: the accuracy compared (best-validation or final "
                                "model).")
    search_dir: str | None = option(None, "oneshot: a finished tools/search.py run directory "
                                          "(its checkpoints hold the trained supernet).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the command's flags, `EvidenceConfig`'s options and the checks that need
    several (called when run as a script, not on import)."""
    define_config_flags(EvidenceConfig, flag_values)
    # list them under --help, not only --helpfull
    flags.adopt_module_key_flags(ub_flags, flag_values)
    flags.register_validator(
        "arms", lambda v: set(v) <= set(CHANCE_ARMS),
        message=f"--arms must list some of {', '.join(CHANCE_ARMS)}.", flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["search_overrides", "variant"], lambda d: not d["search_overrides"] or bool(d["variant"]),
        message="--search_overrides needs a --variant name for its searched arm.",
        flag_values=flag_values)


def main(argv) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"{program_name()}: error: give one command, {' or '.join(COMMANDS)}; got "
              f"{argv[1:]}.", file=sys.stderr)
        return 2
    config = config_from_flags(EvidenceConfig)
    if argv[1] == "report":
        return write_report(config)
    ledger = Ledger(config.ledger)
    if argv[1] == "oneshot":
        return _one_shot(config, ledger)
    if not os.path.isfile(os.path.join(REPO, config.recipe)):
        print(f"{program_name()}: error: --recipe={config.recipe} is not a flagfile of {REPO}.",
              file=sys.stderr)
        return 2
    try:
        check_output_dir(config.work_dir, "--work_dir")
        check_output_dir(os.path.dirname(os.path.abspath(config.ledger)), "--ledger's directory")
        ledger.rows()  # a file that is not a ledger is refused before any work
        trials = chance_trials(config, config.arms, ledger, REPO)
    except (ValueError, LedgerError) as err:  # FlagError is a ValueError
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return 2
    return exit_status_of_run(EvidenceRunner(ledger, config.work_dir, config.commit), trials,
                              program_name())


def write_report(config: EvidenceConfig) -> int:
    """``report``: the comparison, from the ledger alone (and ``one_shot.csv`` beside it),
    printed, written to --output and into --readme's evidence section; returns the exit
    status (2 for a ledger or README it cannot use). The seed compared is --train_seed."""
    from ubnas_tf.evidence import report  # deferred: loads scipy.stats (0.3 s)

    prog = program_name()
    if not os.path.isfile(config.ledger):
        print(f"{prog}: error: --ledger={config.ledger}: no such file.", file=sys.stderr)
        return 2
    try:
        rows = report.load_rows(config.ledger)
    except (OSError, ValueError, csv.Error) as err:
        print(f"{prog}: error: --ledger={config.ledger}: {err}", file=sys.stderr)
        return 2
    text = report.report_markdown(rows, metric=config.metric, base_seed=config.train_seed,
                                  one_shot=report.load_one_shot(config.ledger))
    if config.output:
        atomic_write_text(config.output, text)
    if config.readme:
        try:
            with open(config.readme, encoding="utf-8") as f:
                readme = report.replace_readme_section(f.read(), report.readme_section(
                    rows, metric=config.metric, base_seed=config.train_seed))
        except (OSError, ValueError) as err:
            print(f"{prog}: error: --readme={config.readme}: {err}", file=sys.stderr)
            return 2
        atomic_write_text(config.readme, readme)
    print(text, end="")
    return 0


def _one_shot(config: EvidenceConfig, ledger: Ledger) -> int:
    """``oneshot``: adds to ``one_shot.csv`` beside the ledger what the supernet of
    --search_dir thinks of the ledger's random genotypes it has not judged yet."""
    from ubnas_tf.evidence import report  # deferred: loads scipy.stats (0.3 s)

    search_dir = config.search_dir
    if not search_dir or not os.path.isfile(os.path.join(search_dir, "summary.json")):
        print(f"{program_name()}: error: --search_dir={search_dir} is not a finished "
              "tools/search.py run directory (no summary.json).", file=sys.stderr)
        return 2
    path = os.path.join(ledger.directory, report.ONE_SHOT_FILE)
    columns = ("search", "genotype", "one_shot_accuracy", "log_prob")
    rows = report.load_one_shot(ledger.path)
    search = os.path.basename(os.path.normpath(search_dir))
    held = {r["genotype"] for r in rows if r["search"] == search}
    wanted = [g for g in dict.fromkeys(r["genotype"] for r in ledger.rows()
                                       if r["arm"] == "random") if g not in held]
    print(f"{len(wanted)} random genotypes of the ledger to judge with the supernet of "
          f"{search_dir}", flush=True)
    if not wanted:
        return 0
    model, images, labels = load_supernet(search_dir)
    values = model.arch_values()
    for digest in wanted:
        genotype = Genotype.load(ledger.genotype_path(digest))
        acc = one_shot_accuracy(model, genotype, images, labels)
        log_prob = genotype_log_prob(genotype, values, model.primitives, model.steps,
                                     model.searched_reduction)
        rows.append({"search": search, "genotype": digest, "one_shot_accuracy": f"{acc:.4f}",
                     "log_prob": f"{log_prob:.4f}"})
        print(f"  {digest}: one-shot accuracy {acc:.4f}, log-probability {log_prob:.2f}",
              flush=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return 0


def run() -> None:
    """The ``ubnas-evidence`` console script (and ``python tools/evidence.py``)."""
    define_flags()
    run_main(__name__, main)


if __name__ == "__main__":
    run()
