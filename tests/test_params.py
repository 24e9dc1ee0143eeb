"""InitNO's parameters from `NAME=VALUE` text (the eval command's `--set`): validated like every other way in."""

from __future__ import annotations

import pytest

from initno.params import InitNOParams


def test_assignments_change_only_what_they_name():
    params = InitNOParams.from_assignments(["conflict_threshold=0.45", " max_rounds = 3"])
    assert params == InitNOParams().replace(conflict_threshold=0.45, max_rounds=3)
    assert isinstance(params.max_rounds, int)
    assert InitNOParams.from_assignments([]) == InitNOParams()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("conflict_treshold=0.4", "expected NAME=VALUE with NAME one of max_rounds, "),
        ("max_rounds", "expected NAME=VALUE"),
        ("max_rounds=many", "'max_rounds' must be a number, got 'many'"),
        ("max_rounds=2.5", "'max_rounds' must be a whole number, got 2.5"),
        ("conflict_threshold=0.9", "'conflict_threshold' must be between 0.0 and 0.5, got 0.9"),
    ],
)
def test_bad_assignments_are_named(assignment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        InitNOParams.from_assignments([assignment])
