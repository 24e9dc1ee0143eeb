"""The argument rules of the WebUI glue (pure Python: no host needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from initno.params import InitNOParams
from initno.webui.args import ARGS, BY_NAME, ArgumentError, ScriptArgs


def test_positional_order_and_defaults():
    assert [a.name for a in ARGS][:3] == ["enabled", "subjects", "max_rounds"]
    # The positional order is part of the API: the first twelve keep their places, new arguments follow them.
    assert [a.name for a in ARGS][11:] == [
        "diagnostics",
        "method",
        "guided_fraction",
        "step_scale",
        "max_refinement",
        "refinement_schedule",
        "lookahead_candidates",
        "lookahead_steps",
        "thresholds",
    ]
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
        ([{"max_rounds": "inf"}], "'max_rounds' must be int, got 'inf'"),  # int(inf) overflows
        ([{"max_rounds": 10**400}], "'max_rounds' must be int, got 1000"),  # too big for a float
        ([{"learning_rate": "1e999"}], "'learning_rate' must be between"),  # inf: a float, out of range
        ([{"cross_threshold": "high"}], "'cross_threshold' must be float, got 'high'"),
        ([{"subjects": 3}], "'subjects' must be str, got 3"),
        ([{"enabled": "maybe"}], r"'enabled' must be a boolean \(true or false\), got 'maybe'"),
        ([{"enabled": "no"}], r"'enabled' must be a boolean \(true or false\), got 'no'"),
        ([{"diagnostics": "0"}], r"'diagnostics' must be a boolean \(true or false\), got '0'"),
        ([{"diagnostics": 1}], r"'diagnostics' must be a boolean \(true or false\), got 1"),
        ([0, "cat"], r"'enabled' must be a boolean \(true or false\), got 0"),
        ([True] + [None] * 20, "at most 20 positional arguments, got 21"),
        ([{"thresholds": "calibrate"}], "'thresholds' must be one of 'calibrated', 'official', got 'calibrate'"),
        (
            [{"method": "initno++"}],
            r"'method' must be one of 'lookahead', 'initno', 'initno\+', 'ae', got 'initno\+\+'",
        ),
        ([{"lookahead_candidates": 1}], "'lookahead_candidates' must be between 2 and 16, got 1"),
        ([{"lookahead_candidates": 3.5}], "'lookahead_candidates' must be int, got 3.5"),
        ([{"lookahead_steps": -1}], "'lookahead_steps' must be between 0 and 20, got -1"),
        ([{"guided_fraction": 1.5}], "'guided_fraction' must be between 0.0 and 1.0, got 1.5"),
        ([{"max_refinement": 0}], "'max_refinement' must be between 1 and 100, got 0"),
        ([{"refinement_schedule": "10-0.2"}], r"'refinement_schedule': cannot read '10-0.2'; expected 'step:cross'"),
        ([{"refinement_schedule": "60:0.2"}], r"'refinement_schedule': step 60 in '60:0.2' is not between 0 and 50"),
        ([{"refinement_schedule": "10:2"}], r"'refinement_schedule': threshold 2 in '10:2' is not between 0 and 1"),
        ([{"refinement_schedule": "10:0.2, 10:0.3"}], "'refinement_schedule': step 10 appears twice"),
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
    assert ScriptArgs.from_named({"enabled": " TRUE ", "diagnostics": "False"}).enabled


def test_booleans_are_json_booleans_or_their_text():
    enabled = ARGS[0]
    assert [enabled.convert(v) for v in (True, False, "true", "False")] == [True, False, True, False]
    for refused in ("yes", "on", "1", "", 0, 1, None, 1.0):
        with pytest.raises(ArgumentError, match="'enabled' must be a boolean"):
            enabled.convert(refused)


def test_infotext_has_every_parameter_and_leaves_defaults_of_the_optional_ones_out():
    named = {"enabled": True, "subjects": "", "method": "initno", "max_rounds": 2, "thresholds": "official"}
    text = ScriptArgs.from_named(named).infotext()
    assert text["InitNO max rounds"] == 2
    assert text["InitNO KL bound"] == 0.001
    assert "InitNO subjects" not in text and "InitNO diagnostics" not in text  # left out, not None
    assert "InitNO guided fraction" not in text and "InitNO candidates" not in text  # InitNO alone
    assert text["InitNO method"] == "initno"  # always there: its absence meant InitNO before lookahead
    assert len(text) == len(ARGS) - 9
    chosen = ScriptArgs.from_named({"subjects": "cat", "diagnostics": True}).infotext()
    assert (chosen["InitNO subjects"], chosen["InitNO diagnostics"]) == ("cat", True)
    assert len({a.infotext for a in ARGS}) == len(ARGS)


def test_thresholds_are_calibrated_by_default_for_the_methods_that_optimise_the_noise():
    from initno.calibration import THRESHOLD_PARAMS

    initno = ScriptArgs.from_named({"method": "initno", "cross_threshold": 0.1})
    assert initno.thresholds == "calibrated" and initno.calibrated
    assert ScriptArgs.from_named({"method": "initno+"}).calibrated
    assert not ScriptArgs.from_named({"method": "initno", "thresholds": "Official (SD1.4's)"}).calibrated  # the label
    assert not ScriptArgs.from_named({"method": "lookahead"}).calibrated  # Fast has no validity thresholds
    # the infotext says which thresholds; the settings' thresholds only where they were used
    text = initno.infotext()
    assert text["InitNO thresholds"] == "calibrated"
    assert not {BY_NAME[name].infotext for name in THRESHOLD_PARAMS} & set(text)
    official = initno.replace(thresholds="official").infotext()
    assert (official["InitNO thresholds"], official["InitNO cross threshold"]) == ("official", 0.1)
    assert "InitNO thresholds" not in ScriptArgs.from_named({"method": "ae"}).infotext()
    for name in THRESHOLD_PARAMS:
        assert "Used with Thresholds: official" in BY_NAME[name].help


def test_requests_enabled_reads_only_the_switch():
    assert ScriptArgs.requests_enabled([{"max_rounds": "not checked yet"}])
    assert not ScriptArgs.requests_enabled([False, "cat", "not checked"])
    assert not ScriptArgs.requests_enabled([])


def _readme_controls_table() -> list[tuple[str, str]]:
    """(control, default) per row of the README's controls table (section Use)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("| Control | Default | What it does |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()]
    return [(control.removeprefix("*Advanced:* "), default) for control, default, _ in rows]


def test_the_readme_documents_the_positional_order_the_code_accepts():
    table = _readme_controls_table()
    assert [control for control, _ in table] == [arg.label for arg in ARGS]

    def shown(default):  # not a dict: 0 == False
        return "off" if default is False else "empty" if default == "" else str(default)

    assert [default for _, default in table] == [
        dict(arg.choices)[arg.default] if arg.choices else shown(arg.default) for arg in ARGS
    ]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"`GET /initno/v1/schema` lists: `([^`]+)`", readme.replace("\n", " ")).group(1)
    assert listed.split(", ") == [arg.name for arg in ARGS]
    # and the documented order is the accepted one: each value lands on the argument its row names
    values = {"enabled": True, "subjects": "cat", "max_rounds": 3, "steps_per_round": 4, "fallback_steps": 6}
    values |= {"cross_threshold": 0.25, "conflict_threshold": 0.35, "learning_rate": 0.02, "adam_eps": 0.002}
    values |= {"kl_bound": 0.003, "kl_max_steps": 500, "diagnostics": True, "method": "ae", "guided_fraction": 0.3}
    values |= {"step_scale": 10.0, "max_refinement": 5, "refinement_schedule": "0:0.5"}
    values |= {"lookahead_candidates": 6, "lookahead_steps": 3, "thresholds": "official"}
    by_label = {arg.label: arg.name for arg in ARGS}
    positional = [values[by_label[control]] for control, _ in table]
    assert ScriptArgs.from_script_args(positional).as_named() == values


def test_the_method_and_its_guidance_settings():
    ae = ScriptArgs.from_named({"method": "Sampling guidance only (Attend-and-Excite)", "guided_fraction": 0.3})
    assert ae.method == "ae" and not ae.optimises_noise  # the UI's label or the API's value
    settings = ae.guidance
    assert (settings.method, settings.guided_fraction, settings.refinements) == ("ae", 0.3, None)
    assert ScriptArgs.from_named({"method": "initno"}).guidance is None
    assert ScriptArgs.from_named({"method": "initno"}).optimises_noise
    plus = ScriptArgs.from_named({"method": "INITNO+", "refinement_schedule": "20:0.1:0.25; 5:0.3"})
    assert [(r.step, r.cross, r.conflict) for r in plus.guidance.refinements] == [(5, 0.3, None), (20, 0.1, 0.25)]
    assert ScriptArgs.from_named({"method": "ae", "refinement_schedule": " None "}).guidance.refinements == ()
    # The infotext has what applies: Attend-and-Excite leaves the noise as it is, so no noise settings.
    text = ae.infotext()
    assert text["InitNO method"] == "ae" and text["InitNO guided fraction"] == 0.3
    assert "InitNO max rounds" not in text and "InitNO refinement schedule" not in text
    assert plus.infotext()["InitNO refinement schedule"] == "20:0.1:0.25; 5:0.3"
    assert plus.infotext()["InitNO max rounds"] == 5
    # A change of method keeps the guidance settings chosen (X/Y/Z over the method)
    assert ae.replace(method="initno+").guidance.guided_fraction == 0.3


def test_refinement_schedules_read_back_as_written():
    from initno.guidance import OFFICIAL_REFINEMENTS, format_refinements, parse_refinements

    for refinements in OFFICIAL_REFINEMENTS.values():
        read = parse_refinements(format_refinements(refinements))
        assert [r.step for r in read] == [r.step for r in refinements]
        assert [r.cross for r in read] == pytest.approx([r.cross for r in refinements])
        assert [r.conflict for r in read] == [r.conflict for r in refinements]
    assert format_refinements(OFFICIAL_REFINEMENTS["ae"]) == "0:0.95, 10:0.5, 20:0.2"
    assert format_refinements(()) == "none" and parse_refinements("") is None


def test_lookahead_is_the_default_and_says_what_it_costs():
    from initno import methods
    from initno.selection import LookaheadParams

    args = ScriptArgs.from_named({})
    assert args.method == methods.DEFAULT == methods.LOOKAHEAD
    assert args.selects_noise and not args.optimises_noise and args.guidance is None
    assert args.lookahead == LookaheadParams()
    # its cost in sampling steps of one image (2 passes each): 4 × 2 steps ahead = 20 passes
    assert dict(ARGS[12].choices)["lookahead"] == "Fast: choose the best of 4 noises (≈ 10 sampling steps)"
    assert methods.lookahead_label(LookaheadParams(2, 0)) == "Fast: choose the best of 2 noises (≈ 1 sampling step)"
    assert ScriptArgs.from_named({"method": "initno"}).lookahead is None
    chosen = ScriptArgs.from_named({"lookahead_candidates": 8, "lookahead_steps": "3"})
    assert chosen.lookahead == LookaheadParams(candidates=8, steps=3)
    # The infotext has lookahead's settings and not the optimisation's; the method is always written.
    text = chosen.infotext()
    assert (text["InitNO method"], text["InitNO candidates"], text["InitNO lookahead steps"]) == ("lookahead", 8, 3)
    assert "InitNO max rounds" not in text and "InitNO guided fraction" not in text
    assert ScriptArgs.from_named({"method": methods.lookahead_label()}).selects_noise  # the UI's label
