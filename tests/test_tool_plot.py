"""tools/plot.py as a user meets it (run as a subprocess): a missing or empty run directory is
refused with a message that says what it looked for; `--help` lists every flag with a help
sentence.

The checks are those of every tool, `tool_runs.ToolTests`; its bad command lines are in
`tool_runs.BAD_INPUTS`."""

from tool_runs import ToolTests


class TestPlot(ToolTests):
    tool = "plot"
