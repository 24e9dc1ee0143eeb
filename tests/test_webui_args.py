"""The argument rules of the WebUI glue (pure Python: no host needed)."""

from __future__ import annotations

import pytest

from initno.params import InitNOParams
from initno.webui.args import ARGS, ArgumentError, ScriptArgs


def test_positional_order_and_defaults():
    assert [a.name for a in ARGS][:3] == ["enabled", "subjects", "max_rounds"]
    assert ARGS[-1].name == "diagnostics"
    args = ScriptArgs.from_script_args([True, "cat, dog", 3])
    assert (args.enabled, args.subjects, args.params.max_rounds) == (True, "cat, dog", 3)
    assert args.params.steps_per_round == InitNOParams().steps_per_round
    assert ScriptArgs.from_script_args([True, "cat", None, None]).params == InitNOParams()


def test_named_arguments_turn_initno_on_unless_told_otherwise():
    assert ScriptArgs.from_script_args([{"subjects": "cat, dog", "max_rounds": 5}]).enabled
    assert not ScriptArgs.from_script_args([{"enabled": False}]).enabled
    # The API fills the slots after the dict with the controls' defaults: they do not count.
    assert ScriptArgs.from_script_args([{"max_rounds": 2}, "ignored", 7]).params.max_rounds == 2


def test_settings_defaults_apply_and_explicit_values_win():
    defaults = {"max_rounds": 3, "learning_rate": 0.05}
    args = ScriptArgs.from_script_args([True, "cat"], defaults)
    assert (args.params.max_rounds, args.params.learning_rate) == (3, 0.05)
    assert ScriptArgs.from_script_args([{"max_rounds": 4}], defaults).params.max_rounds == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([{"max_round": 5}], r"unknown InitNO argument\(s\) \['max_round'\]; known: enabled, subjects, max_rounds"),
        ([{"max_rounds": 50}], "'max_rounds' must be between 1 and 20, got 50"),
        ([{"max_rounds": 2.5}], "'max_rounds' must be int, got 2.5"),
        ([{"cross_threshold": "high"}], "'cross_threshold' must be float, got 'high'"),
        ([{"subjects": 3}], "'subjects' must be str, got 3"),
        ([{"enabled": "maybe"}], "'enabled' must be bool, got 'maybe'"),
        ([True] + [None] * 20, "at most 12 positional arguments, got 21"),
    ],
)
def test_bad_arguments_are_named(values, message):
    with pytest.raises(ArgumentError, match=message):
        ScriptArgs.from_script_args(values)


def test_values_as_strings_from_infotext_and_xyz():
    args = ScriptArgs.from_named(
        {"enabled": "True", "max_rounds": "2", "cross_threshold": "0.15", "diagnostics": "false"}
    )
    assert (args.enabled, args.params.max_rounds, args.params.cross_threshold, args.diagnostics) == (
        True,
        2,
        0.15,
        False,
    )
    assert ScriptArgs.from_named({"max_rounds": 3.0}).params.max_rounds == 3  # pasted ints arrive as floats


def test_infotext_has_every_parameter_and_leaves_defaults_of_the_optional_ones_out():
    text = ScriptArgs.from_named({"enabled": True, "subjects": "", "max_rounds": 2}).infotext()
    assert text["InitNO max rounds"] == 2
    assert text["InitNO KL bound"] == 0.001
    assert text["InitNO subjects"] is None and text["InitNO diagnostics"] is None
    assert len(text) == len(ARGS) - 1
    assert len({a.infotext for a in ARGS}) == len(ARGS)


def test_requests_enabled_reads_only_the_switch():
    assert ScriptArgs.requests_enabled([{"max_rounds": "not checked yet"}])
    assert not ScriptArgs.requests_enabled([False, "cat", "not checked"])
    assert not ScriptArgs.requests_enabled([])
