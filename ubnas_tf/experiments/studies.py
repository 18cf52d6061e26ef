"""The paper's search studies, measured: channel sampling ratio K, early stopping, and the
module structures confirmed by a real search and retraining.

    python benchmarks/studies.py --study=k_ratio
    python benchmarks/studies.py --study=early_stopping --seeds=0,1
    python benchmarks/studies.py --study=module_structure --variants=universal,reactnet

A study is a grid of variants (flag overrides of one search flagfile, default the quick start
`flags/fashion_mnist.flags`, and for the module structures of the retraining too) times
search seeds; `--variants` runs some of a study's variants. Each cell of the grid runs `tools/search.py`
and then retrains the derived genotype with one fixed short recipe (`--train_flagfile`,
default `flags/fashion_mnist_short_train.flags`) and training seed (`--train_seed`), both as
subprocesses of the committed tools, so that every figure comes from the real commands.
Since recipe and seed are the same for every cell (of variants with the same retraining
overrides), a genotype that another cell of the study has already retrained is not retrained
again (`--reuse_retraining`): the cell shares that
retraining's figures, and the tables name the cell they come from. It saves a retraining
whenever two cells derive the same genotype (at 2 threads, same-seed searches usually do not).
Recorded per cell: the search's wall time, its peak resident memory (the child process's
`VmHWM`), epochs run and why it stopped, images/s, how decided the architecture is
(`op_max_kept`), the derived network's MOPs (`tools/train.py`'s `cost.json`, as
`tools/summary.py` counts them), the retrained test accuracy and the retraining's wall time.

Everything goes to `--output_dir` (default `runs/studies/STUDY`): `flags.json`/`flags.txt`,
one directory per cell (`VARIANT/seedS/search`, `.../train`, `.../timing.json`), and
`results.csv` and `results.md` (per cell, and mean +- sample std per variant), rewritten after
every finished step. Killed at any point, the same command resumes: finished steps are read
back, a half-finished search or training resumes from its last epoch. A step that was resumed
reports the sum of its sessions' wall times (a session killed with the study counts up to
the last state it saved) and the largest of their peaks.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Collection, Sequence

from absl import app, flags

from ubnas_tf.errors import FlagError, StepStopped
from ubnas_tf.evidence.steps import REPO, STOPPED_BY_SIGTERM, finished, run_step
from ubnas_tf.flags import check_output_dir, parse_command_line, present_as_main, program_name
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_json, atomic_write_text, read_json
from ubnas_tf.modules import MODULE_CONFIGS
from ubnas_tf.rundir import RunDirectory
from ubnas_tf.tables import markdown_table, mean_std, text_table

TOOL = "studies"


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
           "retrained_in")

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("study", None, sorted(STUDIES), "The study to run.")
    flags.mark_flag_as_required("study")
    flags.DEFINE_list("seeds", ["0"], "Search seeds; every variant is searched once per seed.")
    flags.DEFINE_list("variants", None,
                      "Run only these of the study's variants (default: all of them); more can "
                      "be added to the same directory later.")
    flags.register_multi_flags_validator(["study", "variants"], _variants_of_the_study)
    flags.register_validator(
        "seeds", lambda v: bool(v) and all(s.isdigit() and int(s) < 2**32 for s in v),
        message="--seeds must be a comma-separated list of integers in [0, 2**32-1], e.g. 0,1.")
    flags.DEFINE_string("search_flagfile", "flags/fashion_mnist.flags",
                        "The search every variant starts from (its --output_dir and --seed are "
                        "replaced).")
    flags.DEFINE_string("train_flagfile", "flags/fashion_mnist_short_train.flags",
                        "The fixed retraining recipe (its --output_dir, --genotype and --seed "
                        "are replaced).")
    for name in ("search_flagfile", "train_flagfile"):
        flags.register_validator(name, os.path.isfile,
                                 message=f"--{name} must name an existing flagfile.")
    flags.DEFINE_integer("train_seed", 0, "Seed of every retraining (the same for all cells).",
                         lower_bound=0, upper_bound=2**32 - 1)
    flags.DEFINE_string("output_dir", None,
                        "Study directory (default runs/studies/STUDY); re-running resumes it.")
    flags.DEFINE_bool("reuse_retraining", True,
                      "Do not retrain a genotype that another cell of the study has already "
                      "retrained (same recipe and seed): share its figures.")
    flags.DEFINE_bool("overwrite", False,
                      "Start afresh even if --output_dir holds a study made with other settings.")


def genotype_id(path: str) -> str:
    """A short name of the genotype in `path`: equal genotypes, and only they, share it."""
    canonical = json.dumps(Genotype.load(path).to_dict(), sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:8]


REUSED = "retraining.json"  # in a cell that shares another cell's retraining


def retraining_of(out: str, genotype: str, peers: Collection[str] | None = None) -> str | None:
    """The cell (``VARIANT/seedS``) of the study that has retrained `genotype` itself, if any,
    among the variants `peers` (those with the same retraining; default any)."""
    for train_dir in sorted(glob.glob(os.path.join(out, "*", "seed*", "train"))):
        cell = os.path.dirname(train_dir)
        if peers is not None and os.path.basename(os.path.dirname(cell)) not in peers:
            continue
        genotype_path = os.path.join(cell, "search", "genotype.json")
        if finished(train_dir) and os.path.exists(genotype_path) and \
                genotype_id(genotype_path) == genotype:
            return os.path.relpath(cell, out)
    return None


def run_cell(out: str, variant: Variant, seed: int, settings: dict, reuse: bool = True,
             peers: Collection[str] | None = None) -> None:
    """The search of one (variant, seed), then the retraining of its genotype (unless another
    cell of the variants `peers`, default any, has retrained the same genotype and `reuse`
    is set)."""
    cell = os.path.join(out, variant.name, f"seed{seed}")
    os.makedirs(cell, exist_ok=True)
    label = f"{variant.name}, seed {seed}"
    search_dir = os.path.join(cell, "search")
    run_step(cell, "search", label,
             ["ubnas_tf.cli.search", f"--flagfile={settings['search_flagfile']}",
              *(f"--{k}={v}" for k, v in variant.overrides.items()),
              f"--seed={seed}", f"--output_dir={search_dir}"])
    genotype_path = os.path.join(search_dir, "genotype.json")
    train_dir = os.path.join(cell, "train")
    if os.path.exists(os.path.join(cell, REUSED)):
        return
    if reuse and not os.path.exists(train_dir):  # a retraining under way is finished, not shared
        genotype = genotype_id(genotype_path)
        source = retraining_of(out, genotype, peers)
        if source is not None:
            print(f"\n=== {label}: genotype {genotype} was retrained in {source}; shared ===",
                  flush=True)
            atomic_write_json(os.path.join(cell, REUSED), {"genotype": genotype, "cell": source})
            return
    run_step(cell, "train", label,
             ["ubnas_tf.cli.train", f"--flagfile={settings['train_flagfile']}",
              f"--genotype={genotype_path}",
              *(f"--{k}={v}" for k, v in variant.train_overrides.items()),
              f"--seed={settings['train_seed']}", f"--output_dir={train_dir}"])


# -- results -----------------------------------------------------------------------------------


def cell_row(out: str, variant: Variant, seed: int) -> dict | None:
    """The figures of a cell whose search and retraining have finished, else None."""
    cell = os.path.join(out, variant.name, f"seed{seed}")
    search_dir = os.path.join(cell, "search")
    reused = os.path.join(cell, REUSED)
    trained_in = read_json(reused)["cell"] if os.path.exists(reused) else None
    train_cell = os.path.join(out, trained_in) if trained_in else cell
    train_dir = os.path.join(train_cell, "train")
    if not (finished(search_dir) and finished(train_dir)):
        return None
    s = read_json(os.path.join(search_dir, "summary.json"))
    t = read_json(os.path.join(train_dir, "summary.json"))
    timing = read_json(os.path.join(cell, "timing.json"))
    train_timing = read_json(os.path.join(train_cell, "timing.json"))
    return {
        "variant": variant.name, "seed": seed, "epochs_run": s["epochs_run"],
        "stop_reason": s["stop_reason"],
        "search_min": timing["search"]["wall_s"] / 60,
        "peak_rss_mb": timing["search"]["peak_rss_mb"],
        "images_per_s": s["images_per_second"],
        "op_max_kept": (s.get("decisiveness") or {}).get("op_max_kept", math.nan),
        "mops": t["cost"]["ops"] / 1e6,
        "test_acc": t["best_model_test_accuracy"],
        "train_min": train_timing["train"]["wall_s"] / 60,
        "genotype": genotype_id(os.path.join(search_dir, "genotype.json")),
        "retrained_in": trained_in or "itself",
    }


NUMERIC = ("epochs_run", "search_min", "peak_rss_mb", "images_per_s", "op_max_kept", "mops",
           "test_acc", "train_min")
DIGITS = {"search_min": 1, "peak_rss_mb": 0, "images_per_s": 1, "op_max_kept": 3, "mops": 3,
          "test_acc": 4, "train_min": 1, "epochs_run": 1}


def summarise(rows: Sequence[dict], variants: Sequence[Variant]) -> list[dict]:
    """Per variant: n, and mean and sample std (ddof=1; None with one seed) of each figure."""
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.name]
        if not mine:
            continue
        agg = {"variant": v.name, "n": len(mine),
               "stop_reasons": "/".join(sorted({r["stop_reason"] for r in mine}))}
        for col in NUMERIC:
            agg[col] = mean_std([float(r[col]) for r in mine])
        out.append(agg)
    return out


def _fmt(value, digits: int) -> str:
    return f"{value:.{digits}f}"


def markdown(study: str, rows: Sequence[dict], summary: Sequence[dict], settings: dict,
             pending: Sequence[str]) -> str:
    def ms(pair, digits):
        mean, std = pair
        return _fmt(mean, digits) + ("" if std is None else f" ± {_fmt(std, digits)}")

    parts = [f"# Study `{study}`", "", STUDIES[study].question, "",
             f"Search: `{settings['search_flagfile']}` with the variant's flags, seeds "
             f"{', '.join(settings['seeds'])}; retraining: `{settings['train_flagfile']}` with "
             "the variant's retraining flags (if any), seed "
             f"{settings['train_seed']}. Test accuracy of the best-validation model on the whole "
             "test set; MOPs = BOPs/64 + FLOPs of the retrained network; wall times on this "
             "machine (the sum over sessions if a step was resumed). `genotype` names the "
             "derived genotype (equal names, equal genotypes); a genotype is retrained once, "
             "and `retrained_in` names the cell whose retraining a row's accuracy and "
             "`train_min` come from.", "",
             "## Per variant (mean ± sample std over seeds)", ""]
    header = ["variant", "n", "stop", *NUMERIC]
    parts.append(markdown_table(header, [
        [a["variant"], a["n"], a["stop_reasons"], *(ms(a[c], DIGITS[c]) for c in NUMERIC)]
        for a in summary]))
    parts += ["", "## Per run", ""]
    parts.append(markdown_table(COLUMNS, [
        [r["variant"], r["seed"], r["epochs_run"], r["stop_reason"],
         *(_fmt(r[c], DIGITS[c]) for c in NUMERIC if c != "epochs_run"), r["genotype"],
         r["retrained_in"]]
        for r in rows]))
    if pending:
        parts += ["", "Not finished yet: " + ", ".join(pending) + "."]
    return "\n".join(parts) + "\n"


def chosen_variants(study: str, names: Sequence[str] | None = None) -> tuple[Variant, ...]:
    """The study's variants named in `names` (default all), in the study's order."""
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


def recipe_peers(variants: Sequence[Variant], variant: Variant) -> set[str]:
    """The variants whose retraining is `variant`'s (so a genotype's retraining is shared)."""
    return {v.name for v in variants if v.train_overrides == variant.train_overrides}


def reported_variants(out: str, study: str, names: Sequence[str] | None) -> list[Variant]:
    """The variants a study's tables show: those chosen, and any other with cells in `out`
    (run by an earlier command with other --variants)."""
    chosen = chosen_variants(study, names)
    return [v for v in STUDIES[study].variants
            if v in chosen or os.path.isdir(os.path.join(out, v.name))]


def write_results(out: str, study: str,
                  settings: dict) -> tuple[list[dict], list[dict], list[str]]:
    """Writes results.csv and results.md; returns the rows, the per-variant summary and the
    cells still to run."""
    variants = reported_variants(out, study, settings.get("variants"))
    rows, pending = [], []
    for v in variants:
        for seed in settings["seeds"]:
            row = cell_row(out, v, int(seed))
            if row is None:
                pending.append(f"{v.name}/seed{seed}")
            else:
                rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(out, "results.csv"), buf.getvalue())
    summary = summarise(rows, variants)
    atomic_write_text(os.path.join(out, "results.md"),
                      markdown(study, rows, summary, settings, pending))
    return rows, summary, pending


def _repo_path(path: str) -> str:
    """`path` relative to the repository if it lies inside it (as the README quotes them)."""
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, REPO]) == REPO
    return os.path.relpath(path, REPO) if inside else path


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    study = FLAGS.study
    out = FLAGS.output_dir or os.path.join("runs", "studies", study)
    settings = {"study": study, "seeds": list(FLAGS.seeds),
                "variants": list(FLAGS.variants) if FLAGS.variants else None,
                "search_flagfile": _repo_path(FLAGS.search_flagfile),
                "train_flagfile": _repo_path(FLAGS.train_flagfile),
                "train_seed": FLAGS.train_seed}
    try:
        variants = chosen_variants(study, settings["variants"])
        check_output_dir(out)
        run = RunDirectory(out, TOOL)
        # Seeds and variants are left out of the record: each has its own cells, so more can
        # be added later.
        run.prepare({k: v for k, v in settings.items() if k not in ("seeds", "variants")},
                    FLAGS.overwrite)
    except FlagError as err:
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return 2
    out = os.path.abspath(run.path)
    print(f"Study {study}: {STUDIES[study].question}\nIn {out}", flush=True)
    for variant in variants:
        for seed in settings["seeds"]:
            try:
                run_cell(out, variant, int(seed), settings, FLAGS.reuse_retraining,
                         recipe_peers(STUDIES[study].variants, variant))
            except StepStopped as err:
                print(f"{program_name()}: stopped: {err}; re-run the same command to resume.",
                      file=sys.stderr)
                return STOPPED_BY_SIGTERM
            except RuntimeError as err:
                print(f"{program_name()}: error: {err}", file=sys.stderr)
                return 1
            write_results(out, study, settings)
    _, summary, pending = write_results(out, study, settings)
    print()
    print(text_table(["variant", "n", "stop", *NUMERIC],
                     [[a["variant"], str(a["n"]), a["stop_reasons"],
                       *(_fmt(a[c][0], DIGITS[c]) for c in NUMERIC)] for a in summary]))
    print(f"\nMeans over seeds; standard deviations in {os.path.join(out, 'results.md')} "
          f"and every run in {os.path.join(out, 'results.csv')}.")
    return 0 if not pending else 1


def run() -> None:
    """The ``ubnas-studies`` console script (and ``python benchmarks/studies.py``)."""
    define_flags()
    present_as_main(__name__)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_command_line)


if __name__ == "__main__":
    run()
