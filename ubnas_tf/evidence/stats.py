"""Statistics for "does the searched architecture beat random ones".

Every test comes from `scipy.stats`; this module only chooses the tests, fixes their
one-sided alternative (H1: the treatment, the searched arm, is better than the control, the
random arm) and collects the numbers the evidence report prints. It imports no TensorFlow.

- `compare`: difference of means with a percentile-bootstrap confidence interval, one-sided
  Welch t-test, one-sided Mann-Whitney U test, and where each treatment value falls among the
  control values.
- `against_sample`: one genotype (a single search) against the control values: its
  percentile, z-score and a one-sample t-test of the control mean.
- `kendall`, `spearman`: rank agreement of two scores of the same architectures (e.g. a proxy
  score against the retrained accuracy).
- `seed_noise`: how much of the spread between genotypes is training-seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "ArmSummary",
    "Comparison",
    "RankAgreement",
    "SingleComparison",
    "SeedNoise",
    "against_sample",
    "compare",
    "kendall",
    "percentile_among",
    "seed_noise",
    "spearman",
    "summarize",
]


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class ArmSummary:
    """Size, mean and sample standard deviation (ddof=1) of one arm.

    ``mean`` is nan for an empty arm, ``std`` is nan for fewer than 2 values.
    """

    n: int
    mean: float
    std: float


def summarize(values: Sequence[float] | np.ndarray) -> ArmSummary:
    """n, mean = sum(x)/n and std = sqrt(sum((x - mean)^2) / (n - 1)) of ``values``."""
    arr = _as_array(values, "values")
    n = int(arr.size)
    mean = float(np.mean(arr)) if n > 0 else math.nan
    std = float(np.std(arr, ddof=1)) if n > 1 else math.nan
    return ArmSummary(n=n, mean=mean, std=std)


def percentile_among(control: Sequence[float] | np.ndarray, value: float) -> float:
    """Percentile of ``value`` among ``control``: 100 * (#below + #ties / 2) / n.

    `scipy.stats.percentileofscore` with ``kind="mean"``; nan when ``control`` is empty.
    """
    arr = _as_array(control, "control")
    if arr.size == 0:
        return math.nan
    return float(sps.percentileofscore(arr, value, kind="mean"))


def _difference_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


@dataclass(frozen=True)
class Comparison:
    """A treatment arm (searched genotypes) against a control arm (random genotypes).

    - ``difference`` = mean(treatment) - mean(control);
    - ``ci_low``, ``ci_high``: percentile-bootstrap confidence interval of that difference,
      each arm resampled with replacement independently (unpaired);
    - ``welch_p``: one-sided Welch t-test, t = difference / sqrt(s_t^2/n_t + s_c^2/n_c) with the
      Welch-Satterthwaite degrees of freedom, H1: mean(treatment) > mean(control);
    - ``mannwhitney_p``: one-sided Mann-Whitney U test, H1: a treatment value tends to exceed a
      control value (exact for small samples without ties, normal approximation otherwise);
    - ``percentiles``: each treatment value's percentile among the control values
      (`percentile_among`), in the order given;
    - ``control_q75``: 75th percentile of the control values (linear interpolation);
    - ``control_max``: the best control value.
    """

    treatment: ArmSummary
    control: ArmSummary
    difference: float
    ci_low: float
    ci_high: float
    welch_p: float
    mannwhitney_p: float
    percentiles: tuple[float, ...]
    control_q75: float
    control_max: float

    def wins(self, alpha: float = 0.05) -> bool:
        """The project's goal: the treatment beats the control.

        True when the difference is positive, both one-sided p values are below ``alpha``, and
        the treatment mean reaches the control's 75th percentile (the searched architectures
        are better than three random ones in four, not just better than the average).
        """
        return bool(
            self.difference > 0
            and self.welch_p < alpha
            and self.mannwhitney_p < alpha
            and self.treatment.mean >= self.control_q75
        )


def _percentile_bootstrap(data: tuple[np.ndarray, np.ndarray], statistic, *, vectorized: bool,
                          paired: bool, confidence: float, n_resamples: int, seed: int):
    """scipy's percentile bootstrap of `statistic` over `data`, its resamples drawn from
    ``np.random.default_rng(seed)``: the same call gives the same interval."""
    return sps.bootstrap(
        data,
        statistic=statistic,
        vectorized=vectorized,
        paired=paired,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )


def compare(
    treatment: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Compares ``treatment`` (e.g. searched accuracies) with ``control`` (random accuracies).

    See `Comparison` for the statistics. The bootstrap uses ``n_resamples`` resamples drawn
    from ``np.random.default_rng(seed)``, so the same call gives the same interval.

    Raises:
        ValueError: if either arm has fewer than 2 values.
    """
    t = _as_array(treatment, "treatment")
    c = _as_array(control, "control")
    for name, arr in (("treatment", t), ("control", c)):
        if arr.size < 2:
            raise ValueError(
                f"compare needs at least 2 values in each arm; {name} has {arr.size}"
            )
    boot = _percentile_bootstrap((t, c), _difference_of_means, vectorized=True, paired=False,
                                 confidence=confidence, n_resamples=n_resamples, seed=seed)
    welch = sps.ttest_ind(t, c, equal_var=False, alternative="greater")
    mannwhitney = sps.mannwhitneyu(t, c, alternative="greater")
    return Comparison(
        treatment=summarize(t),
        control=summarize(c),
        difference=float(np.mean(t) - np.mean(c)),
        ci_low=float(boot.confidence_interval.low),
        ci_high=float(boot.confidence_interval.high),
        welch_p=float(welch.pvalue),
        mannwhitney_p=float(mannwhitney.pvalue),
        percentiles=tuple(percentile_among(c, float(v)) for v in t),
        control_q75=float(np.percentile(c, 75)),
        control_max=float(np.max(c)),
    )


@dataclass(frozen=True)
class SingleComparison:
    """One value (a single searched genotype's accuracy) against the control values.

    - ``difference`` = value - mean(control), ``z`` = difference / std(control) (sample std);
    - ``ttest_p``: one-sided one-sample t-test of the control values, H1: mean(control) <
      value (is the value above what chance gives on average?);
    - ``percentile``: the value's percentile among the control values (`percentile_among`);
    - ``control_q75``, ``control_max`` as in `Comparison`.
    """

    value: float
    control: ArmSummary
    difference: float
    z: float
    ttest_p: float
    percentile: float
    control_q75: float
    control_max: float

    def beats(self, alpha: float = 0.05) -> bool:
        """Above the control mean at one-sided ``alpha`` and at or above its 75th percentile
        (the bar `Comparison.wins` sets for an arm, for one genotype)."""
        return bool(self.difference > 0 and self.ttest_p < alpha
                    and self.value >= self.control_q75)


def against_sample(value: float, control: Sequence[float] | np.ndarray) -> SingleComparison:
    """Compares one ``value`` with ``control`` (see `SingleComparison`).

    Raises:
        ValueError: if ``control`` has fewer than 2 values.
    """
    c = _as_array(control, "control")
    if c.size < 2:
        raise ValueError(f"against_sample needs at least 2 control values; got {c.size}")
    summary = summarize(c)
    test = sps.ttest_1samp(c, popmean=value, alternative="less")
    difference = float(value - summary.mean)
    return SingleComparison(
        value=float(value),
        control=summary,
        difference=difference,
        z=difference / summary.std if summary.std > 0 else math.copysign(math.inf, difference),
        ttest_p=float(test.pvalue),
        percentile=percentile_among(c, value),
        control_q75=float(np.percentile(c, 75)),
        control_max=float(np.max(c)),
    )


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b of two scores of the same n items, its p value (H0: tau = 0,
    two-sided) and a paired percentile-bootstrap confidence interval of tau."""

    n: int
    tau: float
    p: float
    ci_low: float
    ci_high: float


def _paired(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(x, "x"), _as_array(y, "y")
    if a.size != b.size:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"rank agreement needs at least 2 pairs, got {a.size}")
    return a, b


def _kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(sps.kendalltau(a, b).statistic)


def kendall(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> RankAgreement:
    """Kendall's tau-b = (C - D) / sqrt((C + D + T_x) (C + D + T_y)) of paired scores.

    C and D count concordant and discordant pairs, T_x (T_y) pairs tied only in x (y). The
    interval resamples the (x_i, y_i) pairs with replacement. A resample whose x or y values
    are all equal has no tau (nan); if there are any, the interval is taken over the other
    resamples (the same percentiles, ignoring the nans).

    Raises:
        ValueError: if x and y differ in length or have fewer than 2 pairs.
    """
    a, b = _paired(x, y)
    res = sps.kendalltau(a, b)
    boot = _percentile_bootstrap((a, b), _kendall_tau, vectorized=False, paired=True,
                                 confidence=confidence, n_resamples=n_resamples, seed=seed)
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        distribution = boot.bootstrap_distribution
        if not np.all(np.isnan(distribution)):
            alpha = (1 - confidence) / 2
            low, high = (float(q) for q in np.nanpercentile(distribution,
                                                            [100 * alpha, 100 * (1 - alpha)]))
    return RankAgreement(n=int(a.size), tau=float(res.statistic), p=float(res.pvalue),
                         ci_low=low, ci_high=high)


def spearman(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Spearman's rho (the Pearson correlation of the ranks) and its two-sided p value.

    Raises:
        ValueError: if x and y differ in length or have fewer than 2 pairs.
    """
    a, b = _paired(x, y)
    res = sps.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class SeedNoise:
    """Training-seed noise against the spread between genotypes.

    - ``genotypes``: genotypes trained under at least 2 seeds (those the within part uses);
    - ``within_std``: sqrt of the pooled within-genotype variance,
      sum_g (n_g - 1) s_g^2 / sum_g (n_g - 1);
    - ``between_std``: sample std (ddof=1) of one accuracy per genotype;
    - ``genotype_share`` = max(0, 1 - within_var / between_var): the share of the spread between
      genotypes that does not come from the training seed (nan when both variances are 0).
    """

    genotypes: int
    within_std: float
    between_std: float
    genotype_share: float


def seed_noise(groups: Mapping[str, Sequence[float]], between: Sequence[float]) -> SeedNoise:
    """Splits the spread of accuracies into training-seed noise and genotype differences.

    ``groups`` maps a genotype to its accuracies under several training seeds (groups with
    fewer than 2 values are ignored); ``between`` holds one accuracy per genotype, e.g. every
    random genotype at one training seed. See `SeedNoise` for the formulas.

    Raises:
        ValueError: if no group has 2 values, or ``between`` has fewer than 2.
    """
    used = [_as_array(v, f"groups[{k!r}]") for k, v in groups.items()]
    used = [v for v in used if v.size >= 2]
    if not used:
        raise ValueError("seed_noise needs a genotype trained under at least 2 seeds; none is")
    spread = _as_array(between, "between")
    if spread.size < 2:
        raise ValueError(
            f"seed_noise needs at least 2 genotypes in `between`, got {spread.size}"
        )
    dof = sum(v.size - 1 for v in used)
    within_var = float(sum((v.size - 1) * np.var(v, ddof=1) for v in used) / dof)
    between_var = float(np.var(spread, ddof=1))
    if between_var > 0:
        share = max(0.0, 1.0 - within_var / between_var)
    elif within_var > 0:
        share = 0.0
    else:
        share = math.nan
    return SeedNoise(genotypes=len(used), within_std=math.sqrt(within_var),
                     between_std=math.sqrt(between_var), genotype_share=share)
