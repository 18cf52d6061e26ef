"""ubnas_tf.tables.text_table: the one table printer of the tools and benchmarks."""

from __future__ import annotations

import pytest

from ubnas_tf.tables import text_table


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
