"""Does the search beat chance? The experiment that fills the evidence ledger at one budget.

    python tools/evidence.py run --arms=random,hand,searched,noise --commit
    python tools/evidence.py report

Arms, all retrained with one recipe (`--recipe`, default
flags/fashion_mnist_short_train.flags) and training seed `--train_seed`, at the quick start's
budget (`--target_mops`, default 1.5, of the recipe's evaluation network, as
`tools/summary.py` counts OPs):

* ``random``: `--random` genotypes drawn uniformly from the search space and kept within
  `--ops_tolerance` of the target (seeded rejection sampling, as Li & Talwalkar's random
  baseline; the draws are cached in ``draws.json`` beside the ledger, so a later session
  retrains the same ones);
* ``hand``: the hand designs (`--hand`) whose OPs fall within the tolerance;
* ``searched``: one search per seed in `--search_seeds` with `--search_flagfile` (and
  `--search_overrides` with a `--variant` name for a mechanism's own arm), each derived
  genotype retrained;
* ``noise``: the first `--noise_genotypes` random genotypes again with each of
  `--noise_seeds` (training-seed noise: how much of the spread belongs to the genotype).

Every retraining is one row of the ledger (`ubnas_tf.evidence.ledger`); the statistics come
from the ledger alone (`report`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from ubnas_tf.config import option
from ubnas_tf.evidence.ledger import Ledger, Recipe
from ubnas_tf.evidence.options import (
    DEFAULT_SEARCH,
    ops_tolerance_option,
    recipe_option,
    recipe_overrides_option,
    sample_seed_option,
    train_seed_option,
)
from ubnas_tf.evidence.runner import SearchSpec, Trial
from ubnas_tf.evidence.sampling import (
    eval_network_ops,
    hand_designs,
    sample_random_genotypes,
    table_ops,
)
from ubnas_tf.flags import parse_train_flagfile
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_json, read_json
from ubnas_tf.ops import DEFAULT_PRIMITIVES, get_primitive

__all__ = ["CHANCE_ARMS", "ChanceSettings", "chance_trials", "draw_random", "hand_genotypes",
           "recipe_network"]

# The arms of the experiment, in the order `tools/evidence.py run` runs them by default.
CHANCE_ARMS = ("random", "hand", "searched", "noise")

DRAWS_FORMAT = "ubnas-evidence-draws/1"
NETWORK_FIELDS = ("dataset", "layers", "init_channels", "stem_multiplier", "stem_strides",
                  "module_config", "allow_unaligned_widths")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChanceSettings:
    """The experiment at one budget; each field is an option of ``tools/evidence.py run``."""

    recipe: str = recipe_option()
    recipe_overrides: tuple[str, ...] = recipe_overrides_option()
    train_seed: int = train_seed_option(
        "Training seed of every arm's main row (report: the rows compared, one per genotype).")
    target_mops: float = option(1.5, "The budget (MOPs of the recipe's network).",
                                lower_bound=0.01)
    ops_tolerance: float = ops_tolerance_option(
        "Random and hand genotypes lie within this relative distance of --target_mops.")
    sample_seed: int = sample_seed_option()
    random: int = option(16, "Random genotypes.", lower_bound=0)
    hand: tuple[str, ...] = option(
        ("all_bconv_3x3", "all_bdil_conv_3x3"),
        "Hand designs (benchmarks/search_vs_random.py's names: all_K, res_K, pool_K).")
    search_flagfile: str = option(DEFAULT_SEARCH, "The search of the searched arm.")
    search_seeds: tuple[int, ...] = option(tuple(range(8)), "Search seeds.", lower_bound=0)
    search_overrides: tuple[str, ...] = option(
        (), "Flags added to every search, as name=value (a mechanism under test; name it with "
            "--variant).")
    variant: str = option("", "Name of the searched arm's mechanism ('' = the default search).")
    noise_genotypes: int = option(3, "Random genotypes retrained with --noise_seeds too.",
                                  lower_bound=0)
    noise_seeds: tuple[int, ...] = option((1, 2), "Extra training seeds of the noise arm.",
                                          lower_bound=0)

    @property
    def retraining_recipe(self) -> Recipe:
        """The recipe every arm is retrained with: --recipe plus --recipe_overrides."""
        return Recipe(self.recipe, self.recipe_overrides)


def recipe_network(recipe: Recipe, root: str) -> dict:
    """The evaluation-network settings of a training recipe (tools/train.py's defaults, then
    the flagfile's values, then the recipe's overrides): what the OPs of a genotype are
    counted on. Raises FlagError (naming --recipe) for a flagfile tools/train.py refuses."""
    fv = parse_train_flagfile(os.path.join(root, recipe.flagfile), "--recipe", recipe.overrides)
    return {name: fv[name].value for name in NETWORK_FIELDS}


def _primitives() -> tuple[str, ...]:
    return tuple(p for p in DEFAULT_PRIMITIVES if p != "none")


def draw_random(settings: ChanceSettings, ledger: Ledger, root: str,
                cache: str | None = None) -> list[dict]:
    """The first `settings.random` genotypes of the seeded draw within the tolerance, as
    ``{"genotype": HASH, "mops": measured, "index": i}``; cached in `cache` (default
    ``draws.json`` beside the ledger; a longer draw with the same seed starts with the same
    genotypes). The draw is seeded: a lost cache is drawn again, identically."""
    path = cache or os.path.join(ledger.directory, "draws.json")
    key = {"format": DRAWS_FORMAT, "recipe_hash": settings.retraining_recipe.hash(root),
           "target_mops": settings.target_mops, "ops_tolerance": settings.ops_tolerance,
           "sample_seed": settings.sample_seed, "primitives": list(_primitives())}
    cached = read_json(path) if os.path.exists(path) else None
    if cached and {k: cached.get(k) for k in key} == key and \
            len(cached["genotypes"]) >= settings.random:
        return cached["genotypes"][:settings.random]
    network = recipe_network(settings.retraining_recipe, root)
    print(f"Drawing {settings.random} random genotypes within {settings.ops_tolerance:.0%} of "
          f"{settings.target_mops} MOPs (seed {settings.sample_seed}) ...", flush=True)
    predict = table_ops(network, _primitives(), 4)
    found, stats = sample_random_genotypes(
        _primitives(), 4, settings.sample_seed, settings.random, settings.target_mops * 1e6,
        settings.ops_tolerance, 200_000, predict,
        measure=lambda g: eval_network_ops(g, network))
    genotypes = []
    for i, (genotype, _, measured) in enumerate(found):
        genotypes.append({"genotype": ledger.store_genotype(genotype), "mops": measured / 1e6,
                          "index": i})
    atomic_write_json(path, {**key, "draws": stats.draws, "genotypes": genotypes})
    return genotypes


def hand_genotypes(settings: ChanceSettings, root: str) -> dict[str, tuple[Genotype, float]]:
    """The hand designs named in `settings.hand` with their OPs (MOPs) on the recipe's
    network. Raises ValueError naming a design that is unknown or outside the tolerance."""
    primitives = _primitives()
    designs = hand_designs(primitives, 4, [p for p in primitives if get_primitive(p).binary])
    network = recipe_network(settings.retraining_recipe, root)
    out = {}
    for name in settings.hand:
        if name not in designs:
            raise ValueError(f"--hand: {name!r} is not a hand design; use one of "
                             f"{', '.join(sorted(designs))}.")
        genotype = designs[name][0]
        mops = eval_network_ops(genotype, network) / 1e6
        if abs(mops - settings.target_mops) > settings.ops_tolerance * settings.target_mops:
            raise ValueError(f"--hand: {name} costs {mops:.3f} MOPs, outside "
                             f"{settings.ops_tolerance:.0%} of --target_mops="
                             f"{settings.target_mops}.")
        out[name] = (genotype, mops)
    return out


def chance_trials(settings: ChanceSettings, arms: Sequence[str], ledger: Ledger,
                  root: str) -> list[Trial]:
    """The trials of the chosen `arms` (``random``, ``hand``, ``searched``, ``noise``), in the
    order given."""
    trials: list[Trial] = []
    common = dict(recipe=settings.retraining_recipe)
    for arm in arms:
        if arm in ("random", "noise"):
            draws = draw_random(settings, ledger, root)
            chosen = draws if arm == "random" else draws[:settings.noise_genotypes]
            seeds = (settings.train_seed,) if arm == "random" else settings.noise_seeds
            for seed in seeds:
                for d in chosen:
                    trials.append(Trial(
                        "random", f"draw {d['index']} of seed {settings.sample_seed} within "
                        f"{settings.ops_tolerance:.0%} of {settings.target_mops} MOPs",
                        train_seed=seed,
                        genotype=Genotype.load(ledger.genotype_path(d["genotype"])), **common))
        elif arm == "hand":
            for name, (genotype, _) in hand_genotypes(settings, root).items():
                trials.append(Trial("hand", f"hand design {name}", train_seed=settings.train_seed,
                                    genotype=genotype, **common))
        elif arm == "searched":
            for seed in settings.search_seeds:
                spec = SearchSpec(settings.search_flagfile, seed, settings.search_overrides)
                trials.append(Trial("searched", str(spec), train_seed=settings.train_seed,
                                    search=spec, variant=settings.variant, **common))
        else:
            raise ValueError(f"--arms: {arm!r} is not an arm; use random, hand, searched or "
                             "noise.")
    return trials

