"""Does one searched genotype beat chance? It, random genotypes at its OPs and a hand design,
retrained with one recipe into the evidence ledger, then compared from the ledger alone.

    python benchmarks/search_vs_random.py --genotype=runs/fashion_mnist_search/genotype.json

An experiment definition on the evidence runner (`ubnas_tf.evidence.runner`): it builds the
trials and the runner retrains what the ledger (`--ledger`, default the committed
docs/evidence/ledger.csv) does not hold yet, one row per retraining, resumably. The trials,
all with the recipe `--recipe` (+ `--recipe_overrides`) and training seed `--train_seed`:

* the searched genotype (`--genotype`);
* `--random` genotypes drawn uniformly from the search space within `--ops_tolerance` of the
  searched genotype's OPs (seeded by `--sample_seed`; `ubnas_tf.evidence.sampling`);
* a hand design (`--hand_design`): by default the one whose OPs are closest.

Their rows carry the variant ``vs-HASH`` (HASH: the searched genotype's), so that these
random draws stay apart from the ledger's main random arm, drawn at 1.5 MOPs. The verdict
compares the one searched genotype with the random ones: its percentile, z-score and a
one-sided one-sample t-test of the random mean (`ubnas_tf.evidence.stats.against_sample`).
For a search as a method (several search seeds against random), use ``tools/evidence.py``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags

from ubnas_tf import flags as ub_flags
from ubnas_tf.config import option, required
from ubnas_tf.errors import FlagError
from ubnas_tf.evidence.chance import ChanceSettings, draw_random, hand_genotypes, recipe_network
from ubnas_tf.evidence.ledger import Ledger, LedgerError, Recipe, genotype_hash
from ubnas_tf.evidence.options import (
    commit_option,
    ledger_option,
    metric_option,
    ops_tolerance_option,
    recipe_option,
    recipe_overrides_option,
    sample_seed_option,
    train_seed_option,
)
from ubnas_tf.evidence.report import VS_PREFIX
from ubnas_tf.evidence.runner import EvidenceRunner, Trial, exit_status_of_run
from ubnas_tf.evidence.sampling import eval_network_ops, hand_designs, short_genotype
from ubnas_tf.evidence.stats import against_sample
from ubnas_tf.evidence.steps import REPO, repo_path
from ubnas_tf.flags import (
    check_output_dir,
    config_from_flags,
    define_config_flags,
    program_name,
    run_main,
)
from ubnas_tf.genotype import Genotype, GenotypeError
from ubnas_tf.ops import DEFAULT_PRIMITIVES, get_primitive
from ubnas_tf.tables import text_table

FLAGS = flags.FLAGS
CLOSEST = "closest"
NO_HAND = "none"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchVsRandomConfig:
    """The experiment's command line: each field is a flag."""

    genotype: str = required("The searched genotype.json to test against chance.")
    recipe: str = recipe_option()
    recipe_overrides: tuple[str, ...] = recipe_overrides_option()
    train_seed: int = train_seed_option("Training seed of every retraining.")
    random: int = option(8, "Random genotypes to retrain (at least 2).", lower_bound=2)
    ops_tolerance: float = ops_tolerance_option(
        "Random genotypes lie within this relative distance of the searched genotype's OPs.")
    sample_seed: int = sample_seed_option()
    hand_design: str = option(
        CLOSEST, f"'{CLOSEST}' (the hand design whose OPs are closest to the searched "
                 f"genotype's), '{NO_HAND}', or a design: all_K, res_K or pool_K for a binary "
                 "conv K, e.g. all_bconv_3x3 (it must lie within --ops_tolerance).")
    ledger: str = ledger_option()
    work_dir: str = option("runs/search_vs_random", "Run directories of the retrainings and "
                                                    "the cached draws (not committed; the "
                                                    "ledger is).")
    commit: bool = commit_option()
    metric: str = metric_option("The accuracy compared (best-validation or final model).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the experiment's absl flags, `SearchVsRandomConfig`'s options (called when run
    as a script, not on import)."""
    define_config_flags(SearchVsRandomConfig, flag_values)
    # list them under --help, not only --helpfull
    flags.adopt_module_key_flags(ub_flags, flag_values)
    flags.mark_flag_as_required("genotype", flag_values=flag_values)


def variant_name(searched: Genotype) -> str:
    """The ledger variant of one searched genotype's comparison."""
    return f"{VS_PREFIX}{genotype_hash(searched)}"


def closest_hand_design(target_mops: float, network: dict) -> tuple[str, Genotype, float]:
    """(name, genotype, MOPs) of the hand design whose OPs are closest to `target_mops`."""
    primitives = [p for p in DEFAULT_PRIMITIVES if p != "none"]
    designs = hand_designs(primitives, 4, [p for p in primitives if get_primitive(p).binary])
    costs = {name: eval_network_ops(g, network) / 1e6 for name, (g, _) in designs.items()}
    name = min(costs, key=lambda n: abs(costs[n] - target_mops))
    return name, designs[name][0], costs[name]


def plan(config: SearchVsRandomConfig, searched: Genotype, origin: str,
         ledger: Ledger) -> list[Trial]:
    """The trials of the comparison: searched, random within tolerance of its OPs, hand."""
    recipe = Recipe(config.recipe, config.recipe_overrides)
    network = recipe_network(recipe, REPO)
    mops = eval_network_ops(searched, network) / 1e6
    print(f"Searched genotype {genotype_hash(searched)}: {mops:.3f} MOPs on the network of "
          f"{recipe}", flush=True)
    hand = () if config.hand_design in (CLOSEST, NO_HAND) else (config.hand_design,)
    # The chance experiment's draws and hand designs, at the searched genotype's OPs.
    settings = ChanceSettings(recipe=config.recipe, recipe_overrides=config.recipe_overrides,
                              train_seed=config.train_seed, target_mops=round(mops, 4),
                              ops_tolerance=config.ops_tolerance,
                              sample_seed=config.sample_seed, random=config.random, hand=hand)
    variant = variant_name(searched)
    common = dict(recipe=recipe, train_seed=config.train_seed, variant=variant)
    trials = [Trial("searched", origin, genotype=searched, **common)]
    cache = os.path.join(config.work_dir, f"draws-{variant}.json")
    for d in draw_random(settings, ledger, REPO, cache=cache):
        trials.append(Trial(
            "random", f"draw {d['index']} of seed {settings.sample_seed} within "
            f"{settings.ops_tolerance:.0%} of {settings.target_mops} MOPs",
            genotype=Genotype.load(ledger.genotype_path(d["genotype"])), **common))
    if config.hand_design == CLOSEST:
        name, genotype, hand_mops = closest_hand_design(mops, network)
        print(f"Closest hand design: {name} ({hand_mops:.3f} MOPs)", flush=True)
        trials.append(Trial("hand", f"hand design {name}", genotype=genotype, **common))
    else:
        for name, (genotype, _) in hand_genotypes(settings, REPO).items():
            trials.append(Trial("hand", f"hand design {name}", genotype=genotype, **common))
    return trials


def report(trials: list[Trial], ledger: Ledger, metric: str) -> str:
    """The comparison of the trials' rows in the ledger, as text: one line per genotype and
    the verdict. Rows are found by genotype, recipe and seed, whatever experiment added them."""
    recipe_hash = trials[0].recipe.hash(REPO)
    table, values = [], {"searched": [], "random": [], "hand": []}
    for t in trials:
        digest = genotype_hash(t.genotype)
        rows = ledger.find(genotype=digest, recipe_hash=recipe_hash, train_seed=t.train_seed)
        acc = float(rows[0][metric]) if rows else None
        if acc is not None:
            values[t.arm].append(acc)
        table.append([t.arm, digest, short_genotype(t.genotype),
                      f"{float(rows[0]['mops']):.3f}" if rows else "-",
                      f"{acc * 100:.2f}" if acc is not None else "not yet"])
    lines = [text_table(["arm", "genotype", "ops (normal | reduce)", "MOPs", "acc %"], table,
                        left=3), ""]
    randoms = values["random"]
    if not values["searched"] or len(randoms) < 2:
        lines.append(f"No verdict yet: {len(values['searched'])} searched and {len(randoms)} "
                     "random retrainings finished (needs 1 and 2).")
        return "\n".join(lines)
    c = against_sample(values["searched"][0], randoms)
    lines.append(
        f"searched {c.value * 100:.2f} % against {c.control.n} random genotypes "
        f"{c.control.mean * 100:.2f} ± {c.control.std * 100:.2f} % (mean ± sample std; "
        f"q75 {c.control_q75 * 100:.2f}, best {c.control_max * 100:.2f}): "
        f"{c.difference * 100:+.2f} points, z = {c.z:+.2f}, percentile {c.percentile:.0f}, "
        f"one-sided one-sample t-test p = {c.ttest_p:.3g}.")
    for hand in values["hand"]:
        lines.append(f"searched - hand design = {(c.value - hand) * 100:+.2f} points.")
    lines.append("VERDICT: the searched genotype " + (
        "beats chance (p < 0.05 and at or above the random 75th percentile)." if c.beats()
        else "does not beat chance (it needs p < 0.05 and the random 75th percentile)."))
    return "\n".join(lines)


def main(argv) -> int:
    del argv
    prog = program_name()
    config = config_from_flags(SearchVsRandomConfig)
    ledger = Ledger(config.ledger)
    try:
        try:
            searched = Genotype.load(config.genotype)
        except (OSError, GenotypeError, ValueError) as err:
            raise FlagError(f"--genotype={config.genotype} is not a readable genotype.json: "
                            f"{err}") from err
        if not os.path.isfile(os.path.join(REPO, config.recipe)):
            raise FlagError(f"--recipe={config.recipe} is not a flagfile of {REPO}.")
        check_output_dir(config.work_dir, "--work_dir")
        check_output_dir(os.path.dirname(os.path.abspath(config.ledger)), "--ledger's directory")
        ledger.rows()  # a file that is not a ledger is refused before any work
        origin = f"genotype {repo_path(config.genotype)}"
        trials = plan(config, searched, origin, ledger)
    except (FlagError, LedgerError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    code = exit_status_of_run(EvidenceRunner(ledger, config.work_dir, config.commit), trials,
                              prog)
    print("\n" + report(trials, ledger, config.metric))
    return code


def run() -> None:
    """The ``ubnas-bench-search-vs-random`` console script (and
    ``python benchmarks/search_vs_random.py``)."""
    define_flags()
    run_main(__name__, main)


if __name__ == "__main__":
    run()
