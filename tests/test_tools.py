"""The command-line tools as a user meets them (`tools/*.py` run as subprocesses), one test
module a tool: test_tool_search.py, test_tool_train.py, test_tool_convert.py,
test_tool_summary.py, test_tool_plot.py (compare_modules.py and evidence.py in
test_module_comparison.py and test_evidence_ledger.py). Each checks its tool's bad inputs
(they fail fast, before any data is read or model built, with a message that names the flag
or file at fault and what is accepted) and --help (every flag has a help sentence); search.py
and train.py also resume exactly after SIGKILL and SIGTERM, and survive a full disk.

What they share is in tool_runs.py (`ToolTests`, the tests every tool gets, and the table of
bad command lines they run, `BAD_INPUTS`) and conftest.py (the `cli` fixture, which starts a
module's quick tool runs together, a few at a time, each in its own process forked after one
TensorFlow import: that import dominates a failing tool's run time). This module checks the
table itself.
"""

from __future__ import annotations

from tool_runs import BAD_INPUTS, TOOLS


def test_bad_inputs_are_distinct():
    ids = [c.id for c in BAD_INPUTS]
    assert len(ids) == len(set(ids))
    assert len({(c.tool, c.args, c.setup) for c in BAD_INPUTS}) == len(BAD_INPUTS)
    assert len(BAD_INPUTS) >= 24
    assert {c.tool for c in BAD_INPUTS} == set(TOOLS)
