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
import io
import os
import sys

from absl import app, flags

from ubnas_tf.evidence.chance import ChanceSettings, chance_trials
from ubnas_tf.evidence.ledger import Ledger, LedgerError, Recipe
from ubnas_tf.evidence.runner import EvidenceRunner, exit_status_of_run
from ubnas_tf.evidence.steps import REPO
from ubnas_tf.flags import check_output_dir, parse_command_line, present_as_main, program_name
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_text
from ubnas_tf.search.one_shot import genotype_log_prob, load_supernet, one_shot_accuracy

FLAGS = flags.FLAGS
COMMANDS = ("run", "report", "oneshot")


def define_flags() -> None:
    flags.DEFINE_string("ledger", "docs/evidence/ledger.csv", "The evidence ledger (CSV); its "
                        "genotypes are kept in genotypes/ beside it.")
    flags.DEFINE_string("work_dir", "runs/evidence", "Run directories of the searches and "
                        "retrainings (not committed; only the ledger is).")
    flags.DEFINE_string("recipe", "flags/fashion_mnist_short_train.flags",
                        "The retraining recipe: a tools/train.py flagfile.")
    flags.DEFINE_list("recipe_overrides", [], "Flags added to the recipe, as name=value.")
    flags.DEFINE_integer("train_seed", 0, "Training seed of every arm's main row.", lower_bound=0)
    flags.DEFINE_list("arms", ["random", "hand", "searched", "noise"],
                      "Arms to run, in this order: random, hand, searched, noise.")
    flags.DEFINE_float("target_mops", 1.5, "The budget (MOPs of the recipe's network).",
                       lower_bound=0.01)
    flags.DEFINE_float("ops_tolerance", 0.15, "Random and hand genotypes lie within this "
                       "relative distance of --target_mops.", lower_bound=0.001)
    flags.DEFINE_integer("sample_seed", 0, "Seed of the random draws.", lower_bound=0)
    flags.DEFINE_integer("random", 16, "Random genotypes.", lower_bound=0)
    flags.DEFINE_list("hand", ["all_bconv_3x3", "all_bdil_conv_3x3"], "Hand designs "
                      "(benchmarks/search_vs_random.py's names: all_K, res_K, pool_K).")
    flags.DEFINE_string("search_flagfile", "flags/fashion_mnist.flags",
                        "The search of the searched arm.")
    flags.DEFINE_list("search_seeds", [str(s) for s in range(8)], "Search seeds.")
    flags.DEFINE_list("search_overrides", [], "Flags added to every search, as name=value "
                      "(a mechanism under test; name it with --variant).")
    flags.DEFINE_string("variant", "", "Name of the searched arm's mechanism ('' = the "
                        "default search).")
    flags.DEFINE_integer("noise_genotypes", 3, "Random genotypes retrained with --noise_seeds "
                         "too.", lower_bound=0)
    flags.DEFINE_list("noise_seeds", ["1", "2"], "Extra training seeds of the noise arm.")
    flags.DEFINE_bool("commit", False, "git commit the ledger after every row.")
    flags.DEFINE_string("output", None, "report: also write the markdown to this file.")
    flags.DEFINE_string("readme", None, "report: regenerate the evidence section of this "
                        "README (between its evidence markers).")
    flags.DEFINE_enum("metric", "test_accuracy", ["test_accuracy", "final_test_accuracy"],
                      "report: the accuracy compared (best-validation or final model).")
    flags.DEFINE_string("search_dir", None, "oneshot: a finished tools/search.py run directory "
                        "(its checkpoints hold the trained supernet).")
    for name in ("search_seeds", "noise_seeds"):
        flags.register_validator(name, lambda v: all(s.isdigit() for s in v),
                                 message=f"--{name} must be comma-separated integers >= 0.")
    flags.register_validator(
        "arms", lambda v: set(v) <= {"random", "hand", "searched", "noise"},
        message="--arms must list some of random, hand, searched, noise.")
    flags.register_multi_flags_validator(
        ["search_overrides", "variant"], lambda d: not d["search_overrides"] or bool(d["variant"]),
        message="--search_overrides needs a --variant name for its searched arm.")


def main(argv) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"{program_name()}: error: give one command, {' or '.join(COMMANDS)}; got "
              f"{argv[1:]}.", file=sys.stderr)
        return 2
    ledger = Ledger(FLAGS.ledger)
    if argv[1] == "report":
        from ubnas_tf.evidence import report  # deferred: loads scipy.stats (0.3 s)

        args = [f"--ledger={FLAGS.ledger}", f"--metric={FLAGS.metric}"]
        args += [f"--output={FLAGS.output}"] if FLAGS.output else []
        return report.main(args + ([f"--readme={FLAGS.readme}"] if FLAGS.readme else []))
    if argv[1] == "oneshot":
        return _one_shot(ledger)
    if not os.path.isfile(os.path.join(REPO, FLAGS.recipe)):
        print(f"{program_name()}: error: --recipe={FLAGS.recipe} is not a flagfile of {REPO}.",
              file=sys.stderr)
        return 2
    settings = ChanceSettings(
        Recipe(FLAGS.recipe, tuple(FLAGS.recipe_overrides)), FLAGS.train_seed, FLAGS.target_mops,
        FLAGS.ops_tolerance, FLAGS.sample_seed, FLAGS.random, tuple(FLAGS.hand),
        FLAGS.search_flagfile, tuple(int(s) for s in FLAGS.search_seeds),
        tuple(FLAGS.search_overrides), FLAGS.variant, FLAGS.noise_genotypes,
        tuple(int(s) for s in FLAGS.noise_seeds))
    try:
        check_output_dir(FLAGS.work_dir, "--work_dir")
        check_output_dir(os.path.dirname(os.path.abspath(FLAGS.ledger)), "--ledger's directory")
        ledger.rows()  # a file that is not a ledger is refused before any work
        trials = chance_trials(settings, FLAGS.arms, ledger, REPO)
    except (ValueError, LedgerError) as err:
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return 2
    return exit_status_of_run(EvidenceRunner(ledger, FLAGS.work_dir, FLAGS.commit), trials,
                              program_name())


def _one_shot(ledger) -> int:
    from ubnas_tf.evidence.report import ONE_SHOT_FILE  # deferred: loads scipy.stats (0.3 s)

    if not FLAGS.search_dir or not os.path.isfile(os.path.join(FLAGS.search_dir, "summary.json")):
        print(f"{program_name()}: error: --search_dir={FLAGS.search_dir} is not a finished "
              "tools/search.py run directory (no summary.json).", file=sys.stderr)
        return 2
    path = os.path.join(ledger.directory, ONE_SHOT_FILE)
    columns = ("search", "genotype", "one_shot_accuracy", "log_prob")
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    search = os.path.basename(os.path.normpath(FLAGS.search_dir))
    held = {r["genotype"] for r in rows if r["search"] == search}
    wanted = [g for g in dict.fromkeys(r["genotype"] for r in ledger.rows()
                                       if r["arm"] == "random") if g not in held]
    print(f"{len(wanted)} random genotypes of the ledger to judge with the supernet of "
          f"{FLAGS.search_dir}", flush=True)
    if not wanted:
        return 0
    model, images, labels = load_supernet(FLAGS.search_dir)
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
    present_as_main(__name__)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_command_line)


if __name__ == "__main__":
    run()
