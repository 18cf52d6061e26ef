"""tools/summary.py as a user meets it (run as a subprocess): a missing model is refused with
a message that says why; `--help` lists every flag with a help sentence and none of
TensorFlow's start-up noise.

The checks but the last are those of every tool, `tool_runs.ToolTests`; its bad command lines
are in `tool_runs.BAD_INPUTS`."""

from tool_runs import ToolTests, check_start_up_noise


class TestSummary(ToolTests):
    tool = "summary"


def test_tensorflow_start_up_noise_is_hidden_by_default(tmp_path):
    check_start_up_noise(["tools/summary.py"], tmp_path)
