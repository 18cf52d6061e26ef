"""The options the evidence experiments share, each declared once.

The evidence command (`ubnas_tf.evidence.cli`), one genotype against chance
(`ubnas_tf.experiments.search_vs_random`) and the studies (`ubnas_tf.experiments.studies`)
each have a config dataclass whose fields are their flags (`ubnas_tf.config.option`). The
options they have in common (the ledger, the recipe, the seeds, the tolerance, the metric)
come from the functions here, so that a default, a bound or a choice is written once: a
dataclass field belongs to one class, hence a function that makes it. Where an option means
something a little different in each experiment (what lies within the tolerance, which
retrainings a seed applies to), the experiment words its help text.
"""

from __future__ import annotations

from typing import Any

from ubnas_tf.config import option

__all__ = ["DEFAULT_LEDGER", "DEFAULT_RECIPE", "DEFAULT_SEARCH", "METRICS", "OPS_TOLERANCE",
           "commit_option", "ledger_option", "metric_option", "ops_tolerance_option",
           "recipe_option", "recipe_overrides_option", "sample_seed_option",
           "train_seed_option"]

# The committed ledger and the experiments' default search and retraining recipe, as paths
# in the checkout (the tools run there).
DEFAULT_LEDGER = "docs/evidence/ledger.csv"
DEFAULT_SEARCH = "flags/fashion_mnist.flags"
DEFAULT_RECIPE = "flags/fashion_mnist_short_train.flags"
# The accuracies an experiment compares: the best-validation model's or the final model's
# (ledger columns).
METRICS = ("test_accuracy", "final_test_accuracy")
# How far (relative) from the target OPs a genotype still counts as "at equal OPs".
OPS_TOLERANCE = 0.15


def ledger_option() -> Any:
    return option(DEFAULT_LEDGER, "The evidence ledger (CSV) the retrainings are appended to; "
                                  "its genotypes are kept in genotypes/ beside it.")


def commit_option() -> Any:
    return option(False, "git commit the ledger after every row.")


def metric_option(help_text: str) -> Any:
    return option(METRICS[0], help_text, choices=METRICS)


def ops_tolerance_option(help_text: str) -> Any:
    return option(OPS_TOLERANCE, help_text, lower_bound=0.001)


def recipe_option() -> Any:
    return option(DEFAULT_RECIPE, "The retraining recipe: a tools/train.py flagfile of this "
                                  "checkout.")


def recipe_overrides_option() -> Any:
    return option((), "Flags added to the recipe, as name=value.")


def train_seed_option(help_text: str) -> Any:
    # tools/train.py's --seed range (`ubnas_tf.config.FitConfig.seed`): refused here, before
    # any work, rather than by the retraining.
    return option(0, help_text, lower_bound=0, upper_bound=2**32 - 1)


def sample_seed_option() -> Any:
    return option(0, "Seed of the random draws.", lower_bound=0)
