"""ubnas_tf.flags.explain_flag_error: absl's own checks, reported as one clear line each."""

from __future__ import annotations

import pytest
from absl import flags

from ubnas_tf.flags import _check, define_train_flags, explain_flag_error


def _values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_integer("batch_size", 64, "Batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed.", lower_bound=0, upper_bound=9, flag_values=fv)
    flags.DEFINE_float("rate", 0.5, "Rate.", upper_bound=1.0, flag_values=fv)
    flags.DEFINE_enum("dataset", "a", ["a", "b"], "Data.", flag_values=fv)
    flags.DEFINE_string("model", None, "The model to read.", flag_values=fv)
    flags.DEFINE_float("lr", 1.0, "Learning rate.", flag_values=fv)
    flags.register_validator("lr", lambda v: v > 0, message="must be > 0.", flag_values=fv)
    flags.DEFINE_integer("k", 1, "K.", flag_values=fv)
    flags.register_multi_flags_validator(
        ["k", "batch_size"], lambda d: _check(d["batch_size"] % d["k"] == 0,
                                              f"--k={d['k']} does not divide --batch_size."),
        flag_values=fv)
    return fv


@pytest.mark.parametrize("argv, expected", [
    (["--batch_size=0"], "--batch_size=0 is invalid; it must be an integer >= 1."),
    (["--batch_size=x"], "--batch_size=x is invalid; it must be an integer >= 1."),
    (["--seed=12"], "--seed=12 is invalid; it must be an integer in [0, 9]."),
    (["--rate=2"], "--rate=2 is invalid; it must be a number <= 1.0."),
    (["--dataset=c"], "--dataset='c' is unknown; use one of ['a', 'b']."),
    (["--lr=-1"], "--lr=-1.0 must be > 0."),
    (["--k=3"], "--k=3 does not divide --batch_size."),
])
def test_each_kind_of_absl_error_becomes_one_line_naming_the_flag(argv, expected):
    fv = _values()
    with pytest.raises(flags.Error) as err:
        fv(["prog", *argv])
    assert explain_flag_error(err.value, fv) == expected


def test_a_required_flag_is_explained_with_its_help():
    fv = _values()
    flags.mark_flag_as_required("model", flag_values=fv)
    with pytest.raises(flags.Error) as err:
        fv(["prog"])
    assert explain_flag_error(err.value, fv) == "--model is required: The model to read."


def test_define_train_flags_only_defines_the_chosen_flags_and_their_validators():
    fv = flags.FlagValues()
    define_train_flags(fv, only=("layers", "init_channels", "learning_rate"))
    assert sorted(fv) == ["init_channels", "layers", "learning_rate"]
    fv(["prog", "--init_channels=24"])  # the multiple-of-32 rule needs --allow_unaligned_widths
    fv.unparse_flags()
    with pytest.raises(flags.Error) as err:
        fv(["prog", "--learning_rate=0"])
    assert explain_flag_error(err.value, fv) == "--learning_rate=0.0 must be > 0."
    with pytest.raises(ValueError, match="not training flags"):
        define_train_flags(flags.FlagValues(), only=("epochs",))
