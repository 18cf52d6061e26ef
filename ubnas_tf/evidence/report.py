"""Markdown report of an evidence ledger, computed from its rows alone.

    python tools/evidence.py report --output=docs/evidence/report.md

(``ubnas-evidence report``, `ubnas_tf.evidence.cli.write_report`, calls these functions.)

The ledger (a CSV, one row per retraining) has the columns in `COLUMNS`. ``arm`` is
``searched``, ``random`` or ``hand``; searched rows may name a search mechanism in
``variant``. Per recipe (``recipe_hash``) the report gives each arm's accuracies at the base
training seed, each searched arm against the random one (`ubnas_tf.evidence.stats.compare`),
the hand designs' place among the random genotypes, and the training-seed noise
(`ubnas_tf.evidence.stats.seed_noise`). It imports no TensorFlow.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ubnas_tf.evidence.ledger import COLUMNS
from ubnas_tf.evidence.stats import compare, kendall, percentile_among, seed_noise, summarize

__all__ = ["COLUMNS", "METRICS", "ONE_SHOT_FILE", "arm_key", "load_one_shot", "load_rows",
           "readme_section", "replace_readme_section", "report_markdown"]

FLOAT_FIELDS = ("mops", "test_accuracy", "final_test_accuracy", "best_val_accuracy",
                "wall_time_s")
INT_FIELDS = ("train_seed",)
# Accuracy columns the report can be computed on (the commands offer the two test
# accuracies, `ubnas_tf.evidence.options.METRICS`).
METRICS = ("test_accuracy", "final_test_accuracy", "best_val_accuracy")
ONE_SHOT_FILE = "one_shot.csv"  # beside the ledger: what supernets think of its genotypes
ALPHA = 0.05
CONFIDENCE = 0.95
_CI = f"{100 * CONFIDENCE:g} % CI"
# The variant prefix of benchmarks/search_vs_random.py's rows (one genotype's comparison).
VS_PREFIX = "vs-"
_ARM_ORDER = {"searched": 0, "random": 2, "hand": 3}

Row = dict[str, Any]


def load_rows(path: str | os.PathLike) -> list[Row]:
    """Reads the ledger at ``path`` into dicts, one per row, in file order.

    mops, test_accuracy, final_test_accuracy, best_val_accuracy and wall_time_s become floats,
    train_seed an int; an empty numeric field becomes None. Text fields stay strings.

    Raises:
        ValueError: if a column of `COLUMNS` is missing or a numeric field is not a number.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{os.fspath(path)} lacks the column(s) {', '.join(missing)}")
        rows = []
        for raw in reader:
            row: Row = {k: ("" if v is None else v) for k, v in raw.items() if k is not None}
            for field in FLOAT_FIELDS + INT_FIELDS:
                text = row[field].strip()
                try:
                    row[field] = (None if text == "" else
                                  int(text) if field in INT_FIELDS else float(text))
                except ValueError:
                    raise ValueError(f"{os.fspath(path)}, line {reader.line_num}: "
                                     f"{field}={text!r} is not a number") from None
            rows.append(row)
    return rows


def load_one_shot(ledger_path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``one_shot.csv`` beside the ledger at `ledger_path` (what supernets think
    of its genotypes, `tools/evidence.py oneshot`); none if there is no such file."""
    path = os.path.join(os.path.dirname(os.fspath(ledger_path)), ONE_SHOT_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def arm_key(row: Row) -> str:
    """``ARM:VARIANT`` for a row with a variant (a search mechanism, or one experiment's own
    draws such as search_vs_random's ``vs-HASH``), else the arm."""
    arm = (row.get("arm") or "").strip()
    variant = (row.get("variant") or "").strip()
    return f"{arm}:{variant}" if variant else arm


def control_key(key: str, arms: Iterable[str]) -> str:
    """The random arm a searched arm is compared with: its variant's own (``random:VARIANT``)
    if there is one, else the main ``random`` arm."""
    variant = key.partition(":")[2]
    own = f"random:{variant}"
    return own if variant and own in arms else "random"


def _is_searched(key: str) -> bool:
    return key == "searched" or key.startswith("searched:")


def _arm_sort_key(key: str) -> tuple[int, str]:
    return (1 if key.startswith("searched:") else _ARM_ORDER.get(key, 4), key)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def _p(p: float) -> str:
    return f"{p:.3g}"


def _pctile(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _base_samples(rows: Iterable[Row], base_seed: int) -> dict[str, list[Row]]:
    """Rows at ``base_seed`` by arm key, the first row of each genotype in each arm."""
    arms: dict[str, list[Row]] = {}
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if row.get("train_seed") != base_seed:
            continue
        key = arm_key(row)
        if (key, row.get("genotype")) in seen:
            continue
        seen.add((key, row.get("genotype")))
        arms.setdefault(key, []).append(row)
    return {k: arms[k] for k in sorted(arms, key=_arm_sort_key)}


def _arm_table(arms: dict[str, list[Row]], metric: str) -> list[str]:
    lines = ["| arm | n | mean ± std (%) | min (%) | max (%) | mean MOPs |",
             "|---|--:|--:|--:|--:|--:|"]
    for key, samples in arms.items():
        values = [r[metric] for r in samples]
        s = summarize(values)
        spread = f"{_pct(s.mean)} ± {_pct(s.std)}" if s.n > 1 else _pct(s.mean)
        mops = [r["mops"] for r in samples if r.get("mops") is not None]
        mean_mops = f"{np.mean(mops):.2f}" if mops else "–"
        lines.append(f"| {_cell(key)} | {s.n} | {spread} | {_pct(min(values))} "
                     f"| {_pct(max(values))} | {mean_mops} |")
    return lines


def _comparisons(arms: dict[str, list[Row]], metric: str, seed: int) -> list[str]:
    searched = [k for k in arms if _is_searched(k)]
    if not searched:
        return ["No searched arm at the base training seed."]
    table = [f"| arm | Δ mean (points) | {_CI} | Welch p | Mann-Whitney p "
             "| percentiles among random | random q75 / max (%) | verdict |",
             "|---|--:|--:|--:|--:|---|--:|---|"]
    notes = []
    for key in searched:
        treatment = [r[metric] for r in arms[key]]
        random_key = control_key(key, arms)
        control = [r[metric] for r in arms.get(random_key, [])]
        short = [f"{name} has {_plural(len(v), 'genotype')}"
                 for name, v in ((key, treatment), (random_key, control)) if len(v) < 2]
        if short:
            notes.append(f"- {key} vs {random_key}: not compared, {' and '.join(short)} "
                         f"(each arm needs at least 2).")
            continue
        c = compare(treatment, control, confidence=CONFIDENCE, seed=seed)
        verdict = "**wins**" if c.wins(ALPHA) else "does not win"
        table.append(
            f"| {_cell(key)} | {_points(c.difference)} "
            f"| [{_points(c.ci_low)}, {_points(c.ci_high)}] | {_p(c.welch_p)} "
            f"| {_p(c.mannwhitney_p)} | {', '.join(_pctile(v) for v in c.percentiles)} "
            f"| {_pct(c.control_q75)} / {_pct(c.control_max)} | {verdict} |")
    if len(table) == 2:  # no arm could be compared
        return notes
    return table + ([""] if notes else []) + notes


def _hand_designs(arms: dict[str, list[Row]], metric: str) -> list[str]:
    hand = arms.get("hand", [])
    if not hand:
        return ["No hand design at the base training seed."]
    control = [r[metric] for r in arms.get("random", [])]
    lines = ["| design | genotype | accuracy (%) | percentile among random |",
             "|---|---|--:|--:|"]
    for row in hand:
        name = (row.get("origin") or "").strip() or "–"
        pctile = _pctile(percentile_among(control, row[metric])) if control else "–"
        lines.append(f"| {_cell(name)} | {_cell(row.get('genotype') or '')} "
                     f"| {_pct(row[metric])} | {pctile} |")
    return lines


def _seed_noise(rows: Iterable[Row], arms: dict[str, list[Row]], metric: str,
                base_seed: int) -> list[str]:
    by_genotype: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.get("train_seed") is None or not row.get("genotype"):
            continue
        seeds = by_genotype.setdefault(row["genotype"], {})
        seeds.setdefault(row["train_seed"], row[metric])
    groups = {g: list(s.values()) for g, s in by_genotype.items() if len(s) >= 2}
    between = [r[metric] for r in arms.get("random", [])]
    if not groups:
        return ["Not measured yet: no genotype was trained under 2 training seeds."]
    if len(between) < 2:
        return [f"Not measured yet: the random arm has {_plural(len(between), 'genotype')} "
                f"at training seed {base_seed} (needs 2)."]
    noise = seed_noise(groups, between)
    lines = [f"{_plural(noise.genotypes, 'genotype')} under ≥ 2 training seeds: within-genotype "
             f"std {100 * noise.within_std:.2f} points; between-genotype std (random, seed "
             f"{base_seed}) {100 * noise.between_std:.2f} points; genotype share "
             f"{noise.genotype_share:.2f}.", "",
             "| genotype | training seeds | accuracy (%) per seed | range (points) |",
             "|---|---|---|--:|"]
    for genotype, seeds in sorted(by_genotype.items()):
        if len(seeds) < 2:
            continue
        order = sorted(seeds)
        values = [seeds[seed] for seed in order]
        lines.append(f"| {_cell(genotype)} | {', '.join(map(str, order))} "
                     f"| {', '.join(_pct(v) for v in values)} "
                     f"| {100 * (max(values) - min(values)):.2f} |")
    return lines


def _recipe_section(recipe_hash: str, rows: list[Row], metric: str, base_seed: int,
                    seed: int, one_shot: Sequence[Row] = ()) -> list[str]:
    texts = dict.fromkeys(t for t in ((r.get("recipe") or "").strip() for r in rows) if t)
    title = " / ".join(f"`{t}`" for t in texts) or "(no recipe text)"
    lines = [f"## Recipe {title} (hash `{recipe_hash}`)" if recipe_hash
             else f"## Recipe {title} (no recipe hash)", ""]
    scored = [r for r in rows if r.get(metric) is not None]
    if len(scored) < len(rows):
        lines += [f"{_plural(len(rows) - len(scored), 'row')} without `{metric}` left out.", ""]
    arms = _base_samples(scored, base_seed)
    lines += [f"### Arms at training seed {base_seed}", ""]
    if not arms:
        return lines + [f"No row at training seed {base_seed}."]
    lines += _arm_table(arms, metric)
    lines += ["", "### Searched vs random", ""] + _comparisons(arms, metric, seed)
    lines += ["", "### Hand designs", ""] + _hand_designs(arms, metric)
    lines += ["", "### Training-seed noise", ""] + _seed_noise(scored, arms, metric, base_seed)
    if one_shot:
        lines += ["", "### What the supernet thinks of the random genotypes", ""]
        lines += _one_shot(one_shot, arms.get("random", []), metric, seed)
    return lines


def _one_shot(one_shot: Sequence[Row], random_rows: Sequence[Row], metric: str,
              seed: int) -> list[str]:
    """Kendall's tau of one-shot accuracy and of log-probability against retrained accuracy,
    per search whose supernet judged the random genotypes (`ubnas_tf.search.one_shot`)."""
    retrained = {r["genotype"]: r[metric] for r in random_rows}
    lines = ["| supernet of | n | tau(one-shot acc, retrained) [95 % CI] | p "
             "| tau(log-prob, retrained) [95 % CI] | p |", "|---|--:|--:|--:|--:|--:|"]
    for search in dict.fromkeys(r["search"] for r in one_shot):
        mine = [r for r in one_shot if r["search"] == search and r["genotype"] in retrained]
        if len(mine) < 3:
            lines.append(f"| `{search}` | {len(mine)} | too few genotypes | | | |")
            continue
        acc = [retrained[r["genotype"]] for r in mine]
        cells = []
        for key in ("one_shot_accuracy", "log_prob"):
            k = kendall([float(r[key]) for r in mine], acc, seed=seed)
            cells += [f"{k.tau:+.2f} [{k.ci_low:+.2f}, {k.ci_high:+.2f}]", _p(k.p)]
        lines.append(f"| `{search}` | {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(rows: Sequence[Row], *, metric: str = "test_accuracy", base_seed: int = 0,
                    seed: int = 0, one_shot: Sequence[Row] = ()) -> str:
    """The markdown report of ledger ``rows`` (as `load_rows` gives them).

    One section per ``recipe_hash``, in order of first appearance. Arm tables and comparisons
    use one sample per genotype: the first row of each (arm, genotype) at training seed
    ``base_seed``; the training-seed noise uses every row of the recipe. Rows without
    ``metric`` are left out. ``seed`` seeds the bootstrap intervals. ``one_shot`` rows
    (``one_shot.csv``: search, genotype, one_shot_accuracy, log_prob) add each supernet's
    rank agreement with the random genotypes' retrained accuracy.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    lines = ["# Evidence report", ""]
    if not rows:
        return "\n".join(lines + ["The ledger has no rows yet."]) + "\n"
    lines.append(
        f"`{metric}` in %, one sample per genotype at training seed {base_seed}; Δ in "
        f"percentage points with a {100 * CONFIDENCE:g} % percentile-bootstrap CI (seed {seed}); "
        f"one-sided p values (H1: searched > random); percentiles among random count a tie as "
        f"half. A searched arm **wins** when Δ > 0, both p < {ALPHA} and its mean reaches the "
        f"random 75th percentile.")
    recipes: dict[str, list[Row]] = {}
    for row in rows:
        recipes.setdefault((row.get("recipe_hash") or "").strip(), []).append(row)
    for recipe_hash, recipe_rows in recipes.items():
        lines += [""] + _recipe_section(recipe_hash, recipe_rows, metric, base_seed, seed,
                                        one_shot)
    return "\n".join(lines) + "\n"


README_BEGIN, README_END = "<!-- evidence:begin -->", "<!-- evidence:end -->"


def _search_origin(rows: Sequence[Row]) -> str:
    """' (flags/x.flags, n search seeds)' from a searched arm's origins, or '' if none names one."""
    first_words = {(r.get("origin") or "").split(" ")[0] for r in rows}
    flagfiles = sorted(w for w in first_words if w.endswith(".flags"))
    if not flagfiles:
        return ""
    return f" ({', '.join(f'`{f}`' for f in flagfiles)}, {_plural(len(rows), 'search seed')})"


def readme_section(rows: Sequence[Row], *, metric: str = "test_accuracy", base_seed: int = 0,
                   seed: int = 0, recipe_hash: str | None = None) -> str:
    """The README's searched-against-random paragraph and table, from the ledger alone.

    For the recipe with the most rows (or `recipe_hash`): each arm's n, mean ± std and
    range, and each searched arm against random (difference with its CI, both p values);
    the first sentence says whether the search wins, and which search variants were tried.
    """
    recipes: dict[str, list[Row]] = {}
    for row in rows:
        if row.get(metric) is not None:
            recipes.setdefault((row.get("recipe_hash") or "").strip(), []).append(row)
    if not recipes:
        return "The evidence ledger has no rows yet."
    recipe_hash = recipe_hash or max(recipes, key=lambda k: len(recipes[k]))
    mine = recipes[recipe_hash]
    # One genotype's own comparison (benchmarks/search_vs_random.py) is in the full report.
    arms = {k: v for k, v in _base_samples(mine, base_seed).items()
            if not k.partition(":")[2].startswith(VS_PREFIX)}
    searched = [k for k in arms if _is_searched(k)]
    verdicts = []
    for key in searched:
        treatment = [r[metric] for r in arms[key]]
        control = [r[metric] for r in arms.get(control_key(key, arms), [])]
        if len(treatment) < 2 or len(control) < 2:
            verdicts.append(f"`{key}` is not compared yet ({len(treatment)} searched, "
                            f"{len(control)} random genotypes; each arm needs 2)")
            continue
        c = compare(treatment, control, confidence=CONFIDENCE, seed=seed)
        verdicts.append(
            f"`{key}` {'**beats**' if c.wins(ALPHA) else 'does **not** beat'} random: "
            f"Δ = {_points(c.difference)} points [{_points(c.ci_low)}, {_points(c.ci_high)}], "
            f"Welch p = {_p(c.welch_p)}, Mann-Whitney p = {_p(c.mannwhitney_p)} "
            f"(n = {len(treatment)} against {len(control)})")
    recipe = next((r.get("recipe") for r in mine if r.get("recipe")), "?")
    tried = ", ".join(f"`{k}`{_search_origin(arms[k])}" for k in searched) or "none yet"
    lines = [
        ("So far, " + "; ".join(verdicts) + "." if verdicts else
         "No searched arm has been retrained with this recipe yet.")
        + f" Searches tried: {tried}. Retrained with `{recipe}`, training seed {base_seed}, "
        f"`{metric}` (whole test set); each row's `origin` in the ledger says how its genotype "
        "was searched or drawn.",
        "",
    ]
    lines += _arm_table(arms, metric)
    lines += ["", "Generated from [docs/evidence/ledger.csv](docs/evidence/ledger.csv) by "
              "`tools/evidence.py report --readme=README.md`; the full report, with the "
              "percentiles, hand designs and training-seed noise, is "
              "[docs/evidence/report.md](docs/evidence/report.md)."]
    return "\n".join(lines)


def replace_readme_section(text: str, section: str) -> str:
    """`text` with what lies between the evidence markers replaced by `section`."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"the README has no {README_BEGIN} ... {README_END} markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_BEGIN}\n{section}\n{README_END}{tail}"
