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
    ],
)
def test_bad_assignments_are_named(parse, assignment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse.from_assignments([assignment])
