"""Statistics and report of the evidence ledger, on small hand-computed values."""

from __future__ import annotations

import csv
import math

import pytest
from scipy import stats as sps

from ubnas_tf.evidence import report
from ubnas_tf.evidence.cli import EvidenceConfig, write_report
from ubnas_tf.evidence.stats import (
    against_sample,
    compare,
    kendall,
    seed_noise,
    spearman,
    summarize,
)

TREATMENT = [0.88, 0.89, 0.90]
CONTROL = [0.85, 0.86, 0.87, 0.88]


def test_summarize():
    s = summarize([1, 2, 3, 4])
    assert s.n == 4
    assert s.mean == pytest.approx(2.5)
    # deviations -1.5, -0.5, 0.5, 1.5: squares sum to 5, over n - 1 = 3
    assert s.std == pytest.approx(math.sqrt(5 / 3))


def test_summarize_small_arms():
    one = summarize([0.7])
    assert one.n == 1 and one.mean == pytest.approx(0.7) and math.isnan(one.std)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.std)


def test_compare_against_hand_computed_values():
    c = compare(TREATMENT, CONTROL, n_resamples=2000)
    assert c.treatment.n == 3 and c.control.n == 4
    assert c.treatment.mean == pytest.approx(0.89)
    assert c.control.mean == pytest.approx(0.865)
    assert c.difference == pytest.approx(0.89 - 0.865)

    # Welch by hand: s_t^2 = 0.0001, s_c^2 = (2 * 0.015^2 + 2 * 0.005^2) / 3 = 0.0005 / 3
    var_t, var_c = 0.0001, 0.0005 / 3
    se2 = var_t / 3 + var_c / 4  # 7.5e-5
    t_stat = 0.025 / math.sqrt(se2)
    df = se2**2 / ((var_t / 3) ** 2 / 2 + (var_c / 4) ** 2 / 3)
    assert df == pytest.approx(4.959, abs=1e-3)
    assert c.welch_p == pytest.approx(sps.t.sf(t_stat, df), rel=1e-9)

    # 0.88 is above 3 controls and tied with 1: (3 + 0.5) / 4; 0.89 and 0.90 above all four
    assert c.percentiles == pytest.approx((87.5, 100.0, 100.0))
    # linear interpolation at position 0.75 * 3 = 2.25 between 0.87 and 0.88
    assert c.control_q75 == pytest.approx(0.8725)
    assert c.control_max == pytest.approx(0.88)

    assert c.ci_low <= c.difference <= c.ci_high
    # a resampled difference lies between the extreme ones: 0.88 - 0.88 and 0.90 - 0.85
    assert 0.0 <= c.ci_low and c.ci_high <= 0.05 + 1e-12
    again = compare(TREATMENT, CONTROL, n_resamples=2000)
    assert (again.ci_low, again.ci_high) == (c.ci_low, c.ci_high)
    wider = compare(TREATMENT, CONTROL, n_resamples=2000, confidence=0.99)
    assert wider.ci_low <= c.ci_low and c.ci_high <= wider.ci_high


def test_mann_whitney_exact_for_separated_arms():
    # 3 vs 3, every treatment value above every control value: only 1 of the C(6, 3) = 20
    # equally likely rankings is as extreme, so the exact one-sided p is 1/20
    c = compare([0.90, 0.91, 0.92], [0.85, 0.86, 0.87], n_resamples=200)
    assert c.mannwhitney_p == pytest.approx(1 / 20)


def test_wins():
    # 4 vs 4 fully separated: Mann-Whitney p = 1 / C(8, 4) = 1/70, Welch p tiny
    clear = compare([0.90, 0.91, 0.92, 0.93], [0.85, 0.86, 0.87, 0.88], n_resamples=200)
    assert clear.mannwhitney_p == pytest.approx(1 / 70)
    assert clear.wins()
    # better than the control mean (0.855) but below its 75th percentile (0.9025)
    mediocre = compare([0.86, 0.87, 0.88], [0.80, 0.81, 0.90, 0.91], n_resamples=200)
    assert mediocre.difference > 0
    assert mediocre.control_q75 == pytest.approx(0.9025)
    assert mediocre.treatment.mean < mediocre.control_q75
    assert not mediocre.wins()


def test_compare_needs_two_values_per_arm():
    with pytest.raises(ValueError, match="treatment has 1"):
        compare([0.9], CONTROL)
    with pytest.raises(ValueError, match="control has 1"):
        compare(TREATMENT, [0.8])


def test_kendall():
    x = [1, 2, 3, 4, 5]
    same = kendall(x, [10, 20, 30, 40, 50], n_resamples=500)
    assert same.n == 5 and same.tau == pytest.approx(1.0)
    # every resample of concordant pairs is concordant (a resample of one repeated pair has
    # no tau and is skipped), so the interval is the single point 1
    assert (same.ci_low, same.ci_high) == pytest.approx((1.0, 1.0))
    assert kendall(x, x[::-1], n_resamples=200).tau == pytest.approx(-1.0)
    # pairs (2, 3) are the one discordant pair out of 6: (5 - 1) / 6
    small = kendall([1, 2, 3, 4], [1, 3, 2, 4], n_resamples=500, seed=3)
    assert small.tau == pytest.approx(2 / 3)
    assert -1.0 <= small.ci_low <= small.tau <= small.ci_high <= 1.0
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4], n_resamples=500, seed=3) == small
    with pytest.raises(ValueError, match="same length"):
        kendall([1, 2, 3], [1, 2])


def test_spearman():
    rho, p = spearman([1, 2, 3, 4], [1, 3, 2, 4])
    # rank differences 0, 1, 1, 0: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert rho == pytest.approx(0.8)
    assert 0 < p < 1


def test_seed_noise():
    noise = seed_noise({"a": [0.80, 0.82], "b": [0.90, 0.92], "c": [0.70]},
                       between=[0.80, 0.90, 0.85])
    assert noise.genotypes == 2  # "c" has one seed only
    # each pair has variance 0.01^2 * 2 / 1 = 0.0002; pooled (1 * 0.0002 + 1 * 0.0002) / 2
    assert noise.within_std == pytest.approx(math.sqrt(0.0002))
    # deviations -0.05, 0.05, 0: (0.0025 + 0.0025) / 2 = 0.0025
    assert noise.between_std == pytest.approx(0.05)
    assert noise.genotype_share == pytest.approx(1 - 0.0002 / 0.0025)  # 0.92
    # seed noise larger than the spread between genotypes: no share left to the genotype
    assert seed_noise({"a": [0.7, 0.9]}, [0.80, 0.81]).genotype_share == 0.0
    with pytest.raises(ValueError, match="2 seeds"):
        seed_noise({"a": [0.8]}, [0.8, 0.9])
    with pytest.raises(ValueError, match="between"):
        seed_noise({"a": [0.8, 0.81]}, [0.8])


def _row(arm, genotype, acc, *, seed=0, variant="", origin="", mops=10.0):
    return {"arm": arm, "variant": variant, "genotype": genotype, "origin": origin,
            "mops": mops, "recipe": "flags/fashion_mnist_short_train.flags",
            "recipe_hash": "ab12cd", "train_seed": seed, "test_accuracy": acc,
            "final_test_accuracy": acc, "best_val_accuracy": acc, "wall_time_s": 60.0,
            "commit": "0123abc", "finished_at": "2026-01-01T00:00:00"}


@pytest.fixture
def ledger(tmp_path):
    rows = [
        _row("random", "r00000000001", 0.85, mops=8.0),
        _row("random", "r00000000002", 0.86, mops=10.0),
        _row("random", "r00000000003", 0.87, mops=12.0),
        _row("random", "r00000000004", 0.88, mops=14.0),
        _row("random", "r00000000001", 0.84, seed=1),  # second training seed: not in the table
        _row("random", "r00000000001", 0.99),  # the same genotype again at seed 0: ignored
        _row("searched", "s00000000001", 0.90),
        _row("searched", "s00000000002", 0.91),
        _row("searched", "s00000000003", 0.92),
        _row("searched", "s00000000009", 0.50, seed=1),  # seed 1 only: not in the table
        _row("searched", "f00000000001", 0.93, variant="fixed_reduction"),
        _row("hand", "h00000000001", 0.87, origin="bnn_baseline"),
    ]
    path = tmp_path / "ledger.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=report.COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def test_load_rows_converts_numbers(ledger, tmp_path):
    rows = report.load_rows(ledger)
    assert len(rows) == 12
    assert rows[0]["train_seed"] == 0 and rows[0]["mops"] == 8.0
    assert rows[0]["test_accuracy"] == pytest.approx(0.85)
    assert report.arm_key(rows[6]) == "searched"
    assert report.arm_key(rows[10]) == "searched:fixed_reduction"
    assert report.arm_key(rows[11]) == "hand"
    text = ledger.read_text().splitlines()
    blank = text[1].replace(",60.0,", ",,")  # wall_time_s empty
    (tmp_path / "blank.csv").write_text("\n".join([text[0], blank]) + "\n")
    assert report.load_rows(tmp_path / "blank.csv")[0]["wall_time_s"] is None


def _line(markdown, start):
    found = [line for line in markdown.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def test_report_markdown(ledger):
    md = report.report_markdown(report.load_rows(ledger))
    assert "flags/fashion_mnist_short_train.flags" in md and "ab12cd" in md
    # random: seed-0 rows only, the repeated genotype counted once: mean 86.50, std
    # sqrt(0.0005 / 3) = 1.29 points, MOPs (8 + 10 + 12 + 14) / 4
    assert _line(md, "| random |") == "| random | 4 | 86.50 ± 1.29 | 85.00 | 88.00 | 11.00 |"
    searched = "| searched | 3 | 91.00 ± 1.00 | 90.00 | 92.00 | 10.00 |"
    assert _line(md, "| searched | 3 |") == searched
    assert _line(md, "| searched:fixed_reduction |").startswith(
        "| searched:fixed_reduction | 1 | 93.00 |")
    arms_part = md.split("### Training-seed noise")[0]
    assert "50.00" not in arms_part and "84.00" not in arms_part and "99.00" not in md
    # searched vs random: 3 vs 4 separated, Mann-Whitney p = 1 / C(7, 3) = 1/35 = 0.0286
    cells = [c.strip() for c in _line(md, "| searched | +4.50 |").strip("|").split("|")]
    assert cells[0] == "searched" and cells[1] == "+4.50"
    welch = compare([0.90, 0.91, 0.92], [0.85, 0.86, 0.87, 0.88], n_resamples=200).welch_p
    assert cells[3] == f"{welch:.3g}"
    assert cells[4] == "0.0286"
    assert cells[5] == "100, 100, 100"
    assert cells[6] == "87.25 / 88.00"
    assert cells[7] == "**wins**"
    assert "searched:fixed_reduction vs random: not compared, " \
           "searched:fixed_reduction has 1 genotype" in md
    # hand design 0.87: 2 random below, 1 tied: (2 + 0.5) / 4
    assert _line(md, "| bnn_baseline |") == "| bnn_baseline | h00000000001 | 87.00 | 62.5 |"
    # r00000000001 at seeds 0 and 1 (0.85, 0.84): within var 0.00005, between 0.0005 / 3
    noise = _line(md, "1 genotype under ≥ 2 training seeds")
    assert "within-genotype std 0.71 points" in noise
    assert "between-genotype std (random, seed 0) 1.29 points" in noise
    assert "genotype share 0.70" in noise
    assert _line(md, "| r00000000001 |") == "| r00000000001 | 0, 1 | 85.00, 84.00 | 1.00 |"


def test_report_other_base_seed_and_empty(ledger):
    md = report.report_markdown(report.load_rows(ledger), base_seed=1)
    assert _line(md, "| random |").startswith("| random | 1 | 84.00 |")
    assert "random has 1 genotype" in md
    assert report.report_markdown([]).endswith("The ledger has no rows yet.\n")


def test_the_report_command_prints_and_writes_the_report(ledger, tmp_path, capsys):
    out = tmp_path / "sub" / "report.md"
    assert write_report(EvidenceConfig(ledger=str(ledger), output=str(out))) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert "| searched | 3 |" in printed
    # --train_seed chooses the rows compared, one per genotype (the report's base seed).
    assert write_report(EvidenceConfig(ledger=str(ledger), train_seed=1)) == 0
    assert capsys.readouterr().out == report.report_markdown(report.load_rows(ledger),
                                                             base_seed=1)


def test_the_report_command_refuses_a_missing_ledger_in_one_line(tmp_path, capsys):
    assert write_report(EvidenceConfig(ledger=str(tmp_path / "none.csv"))) == 2
    err = capsys.readouterr().err
    assert "--ledger" in err and "none.csv" in err
    assert len(err.strip().splitlines()) == 1


def test_the_readme_section_is_generated_from_the_ledger(ledger, tmp_path):
    rows = report.load_rows(ledger)
    section = report.readme_section(rows)
    first = section.splitlines()[0]
    assert first.startswith("So far, `searched` **beats** random: Δ = +4.50 points")
    assert "Mann-Whitney p = 0.0286 (n = 3 against 4)" in first
    assert "`searched:fixed_reduction` is not compared yet (1 searched, 4 random" in first
    assert "Searches tried: `searched`, `searched:fixed_reduction`." in first  # no origins
    named = [dict(r, origin=f"flags/fashion_mnist.flags --seed={i}") if r["arm"] == "searched"
             else r for i, r in enumerate(rows)]
    assert ("Searches tried: `searched` (`flags/fashion_mnist.flags`, 3 search seeds), "
            "`searched:fixed_reduction` (`flags/fashion_mnist.flags`, 1 search seed).") \
        in report.readme_section(named)
    assert _line(section, "| random |") == "| random | 4 | 86.50 ± 1.29 | 85.00 | 88.00 | 11.00 |"
    # A losing arm is said to lose, in the first sentence.
    losing = [dict(r, test_accuracy=r["test_accuracy"] - 0.06) if r["arm"] == "searched"
              else r for r in rows]
    assert "`searched` does **not** beat random: Δ = -1.50" in report.readme_section(losing)

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n<!-- evidence:begin -->\nold\n<!-- evidence:end -->\nrest\n")
    assert write_report(EvidenceConfig(ledger=str(ledger), readme=str(readme))) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n<!-- evidence:begin -->\nSo far,")
    assert text.endswith("<!-- evidence:end -->\nrest\n") and "old" not in text
    (tmp_path / "plain.md").write_text("no markers\n")
    assert write_report(EvidenceConfig(ledger=str(ledger), readme=str(tmp_path / "plain.md"))) == 2


def test_the_report_gives_the_supernets_rank_agreement(ledger):
    rows = report.load_rows(ledger)
    # One-shot accuracy in the retrained order (tau 1), log-probability reversed (tau -1).
    one_shot = [{"search": "seed3", "genotype": f"r0000000000{i}", "one_shot_accuracy": 0.1 * i,
                 "log_prob": -0.1 * i} for i in range(1, 5)]
    md = report.report_markdown(rows, one_shot=one_shot)
    cells = [c.strip() for c in _line(md, "| `seed3` |").strip("|").split("|")]
    assert cells[1] == "4" and cells[2].startswith("+1.00") and cells[4].startswith("-1.00")
    few = report.report_markdown(rows, one_shot=one_shot[:2])
    assert "| `seed3` | 2 | too few genotypes |" in few


def test_against_sample_on_a_hand_computed_example():
    c = against_sample(0.90, [0.80, 0.82, 0.84])
    assert c.control.n == 3 and math.isclose(c.control.mean, 0.82)
    assert math.isclose(c.control.std, 0.02) and math.isclose(c.difference, 0.08)
    assert math.isclose(c.z, 4.0)
    # t = (0.82 - 0.90) / (0.02 / sqrt 3) = -sqrt 48 with 2 degrees of freedom, whose CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)): p = 1/2 - sqrt 48 / (2 sqrt 50).
    assert math.isclose(c.ttest_p, 0.5 - math.sqrt(48) / (2 * math.sqrt(50)), rel_tol=1e-9)
    assert c.percentile == 100.0 and math.isclose(c.control_q75, 0.83)
    assert c.beats()
    below = against_sample(0.83, [0.80, 0.82, 0.84])
    assert below.percentile == pytest.approx(100 * 2 / 3) and not below.beats()
    with pytest.raises(ValueError, match="at least 2 control values"):
        against_sample(0.9, [0.8])
