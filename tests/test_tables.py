"""ubnas_tf.tables: the one table printer (text and markdown) of the tools and benchmarks."""

from __future__ import annotations

import pytest

from ubnas_tf.tables import markdown_table, mean_std, text_table


def test_alignment_rules_and_footer():
    out = text_table(("name", "kind", "MOPs"), [("searched", "s", "1.597"), ("r1", "random", "12.0")],
                     left=2, footer=[("Total", "", "13.6")], framed=True).splitlines()
    assert out == [
        "-----------------------",
        "name      kind     MOPs",
        "-----------------------",
        "searched  s       1.597",
        "r1        random   12.0",
        "-----------------------",
        "Total              13.6",
        "-----------------------",
    ]


def test_plain_table_and_row_length_check():
    assert text_table(("a", "b"), [("xx", "1")]).splitlines() == ["a   b", "-----", "xx  1"]
    with pytest.raises(ValueError, match="2 cells"):
        text_table(("a", "b"), [("x",)])


def test_markdown_table_rows_and_escaping():
    assert markdown_table(("variant", "acc"), [("k2_2", 0.87), ("a|b", "0.9 ± 0.1")]).splitlines() == [
        "| variant | acc |",
        "|---|---|",
        "| k2_2 | 0.87 |",
        "| a\\|b | 0.9 ± 0.1 |",
    ]
    assert markdown_table(("a",), []).splitlines() == ["| a |", "|---|"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(("a", "b"), [("x",)])


def test_mean_and_sample_standard_deviation():
    assert mean_std([2.0, 4.0, 9.0]) == (5.0, pytest.approx(13 ** 0.5))  # ddof=1: sqrt(26 / 2)
    assert mean_std([3]) == (3.0, None)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])
