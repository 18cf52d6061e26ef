"""tools/convert.py as a user meets it (run as a subprocess): a missing model, one that is not a
Keras model, or one with nothing to binarise is refused with a message that says why, and
nothing is written; `--help` lists every flag with a help sentence.

The checks are those of every tool, `tool_runs.ToolTests`; its bad command lines are in
`tool_runs.BAD_INPUTS`."""

from tool_runs import ToolTests


class TestConvert(ToolTests):
    tool = "convert"
