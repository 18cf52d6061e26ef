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

from ubnas_tf.evidence.ledger import Ledger, Recipe
from ubnas_tf.evidence.runner import SearchSpec, Trial
from ubnas_tf.evidence.sampling import (
    eval_network_ops,
    hand_designs,
    sample_random_genotypes,
    table_ops,
)
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_json, read_json
from ubnas_tf.nets.training import TrainConfig
from ubnas_tf.ops import DEFAULT_PRIMITIVES, get_primitive

__all__ = ["ChanceSettings", "chance_trials", "draw_random", "hand_genotypes", "recipe_network"]

DRAWS_FORMAT = "ubnas-evidence-draws/1"
NETWORK_FIELDS = ("dataset", "layers", "init_channels", "stem_multiplier", "stem_strides",
                  "module_config", "allow_unaligned_widths")


@dataclasses.dataclass(frozen=True)
class ChanceSettings:
    recipe: Recipe
    train_seed: int = 0
    target_mops: float = 1.5
    ops_tolerance: float = 0.15
    sample_seed: int = 0
    random: int = 16
    hand: tuple[str, ...] = ("all_bconv_3x3", "all_bdil_conv_3x3")
    search_flagfile: str = "flags/fashion_mnist.flags"
    search_seeds: tuple[int, ...] = tuple(range(8))
    search_overrides: tuple[str, ...] = ()
    variant: str = ""
    noise_genotypes: int = 3
    noise_seeds: tuple[int, ...] = (1, 2)


def recipe_network(recipe: Recipe, root: str) -> dict:
    """The evaluation-network settings of a training recipe (TrainConfig defaults, then the
    flagfile's values): what the OPs of a genotype are counted on."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {name: fields[name].default for name in NETWORK_FIELDS}
    for line in recipe.flags(root):
        name, _, raw = line.lstrip("-").partition("=")
        if name.startswith("no") and not raw and name[2:] in values:
            name, raw = name[2:], "false"
        if name not in values:
            continue
        default = fields[name].default
        if isinstance(default, bool):
            values[name] = raw.lower() in ("", "true", "1")
        elif isinstance(default, int):
            values[name] = int(raw)
        else:
            values[name] = raw
    return values


def _primitives() -> tuple[str, ...]:
    return tuple(p for p in DEFAULT_PRIMITIVES if p != "none")


def draw_random(settings: ChanceSettings, ledger: Ledger, root: str,
                cache: str | None = None) -> list[dict]:
    """The first `settings.random` genotypes of the seeded draw within the tolerance, as
    ``{"genotype": HASH, "mops": measured, "index": i}``; cached in `cache` (default
    ``draws.json`` beside the ledger; a longer draw with the same seed starts with the same
    genotypes). The draw is seeded: a lost cache is drawn again, identically."""
    path = cache or os.path.join(ledger.directory, "draws.json")
    key = {"format": DRAWS_FORMAT, "recipe_hash": settings.recipe.hash(root),
           "target_mops": settings.target_mops, "ops_tolerance": settings.ops_tolerance,
           "sample_seed": settings.sample_seed, "primitives": list(_primitives())}
    cached = read_json(path) if os.path.exists(path) else None
    if cached and {k: cached.get(k) for k in key} == key and \
            len(cached["genotypes"]) >= settings.random:
        return cached["genotypes"][:settings.random]
    network = recipe_network(settings.recipe, root)
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
    network = recipe_network(settings.recipe, root)
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
    common = dict(recipe=settings.recipe)
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

