"""InitNO's parameters, and the eval's others, from `NAME=VALUE` text (the eval command's `--set`): validated like
every other way in."""

from __future__ import annotations

import pytest

from initno.guidance import GuidanceSettings
from initno.miniature.evaluate import EvalSettings
from initno.params import InitNOParams


def test_assignments_change_only_what_they_name():
    params = InitNOParams.from_assignments(["conflict_threshold=0.45", " max_rounds = 3"])
    assert params == InitNOParams().replace(conflict_threshold=0.45, max_rounds=3)
    assert isinstance(params.max_rounds, int)
    assert InitNOParams.from_assignments([]) == InitNOParams()


def test_the_eval_sets_the_guidance_of_every_guided_method_and_reports_it():
    settings = EvalSettings.from_assignments(["guidance_step_scale=5", "guidance_max_refinement=3"])
    assert settings.guidance_of("lookahead+") == GuidanceSettings("initno+", step_scale=5.0, max_refinement=3)
    assert settings.guidance_of("ae") == GuidanceSettings("ae", step_scale=5.0, max_refinement=3)
    assert settings.changed() == {"guidance_step_scale": 5.0, "guidance_max_refinement": 3}
    assert EvalSettings.from_assignments([]).guidance_of("initno+") == GuidanceSettings("initno+")


def test_the_eval_calibrates_initnos_thresholds_unless_told_to_use_fixed_ones():
    """As in the WebUI: calibrated by default, where a threshold set by hand would be silently replaced, so
    it is refused; with `thresholds=official` the set one is used and reported."""
    assert EvalSettings.from_assignments([]).thresholds == "calibrated"
    settings = EvalSettings.from_assignments(["thresholds=official", "conflict_threshold=0.45"])
    assert (settings.thresholds, settings.params.conflict_threshold) == ("official", 0.45)
    assert settings.changed() == {"conflict_threshold": 0.45, "thresholds": "official"}
    with pytest.raises(ValueError, match="'conflict_threshold' is used with fixed thresholds: add --set thresholds"):
        EvalSettings.from_assignments(["conflict_threshold=0.45"])


@pytest.mark.parametrize(
    ("parse", "assignment", "message"),
    [
        (InitNOParams, "conflict_treshold=0.4", "expected NAME=VALUE with NAME one of max_rounds, "),
        (InitNOParams, "max_rounds", "expected NAME=VALUE"),
        (InitNOParams, "max_rounds=many", "'max_rounds' must be a number, got 'many'"),
        (InitNOParams, "max_rounds=2.5", "'max_rounds' must be a whole number, got 2.5"),
        (InitNOParams, "conflict_threshold=0.9", "'conflict_threshold' must be between 0.0 and 0.5, got 0.9"),
        (EvalSettings, "guidance_step_scale=big", "'guidance_step_scale' must be a number, got 'big'"),
        (EvalSettings, "guidance_max_refinement=2.5", "'guidance_max_refinement' must be a whole number, got '2.5'"),
        (EvalSettings, "guidance_guided_fraction=-0.5", "'guidance_guided_fraction' must not be negative, got -0.5"),
        (EvalSettings, "guidance_method=ae", "NAME one of "),
        (EvalSettings, "thresholds=sd14", "thresholds must be one of calibrated, official, got 'sd14'"),
    ],
)
def test_bad_assignments_are_named(parse, assignment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse.from_assignments([assignment])
