"""The benchmark's statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from initno.miniature.stats import bootstrap_difference, mcnemar_exact, wilson


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674, half 1.96 * sqrt(0.016 + 0.0009604)
    # / 1.38416 = 0.18440 -> [0.4902, 0.9433].
    low, high = wilson(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_counts_only_discordant_pairs():
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    wins, losses, p = mcnemar_exact(a, b)
    # 12 discordant pairs, 10 against 2: p = 2 (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · 79 / 4096.
    assert (wins, losses) == (10, 2)
    assert p == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    assert mcnemar_exact([True], [False])[2] == 1.0  # one discordant pair: 2 · 1/2, capped at 1
    with pytest.raises(ValueError, match="different lengths"):
        mcnemar_exact([True], [True, False])


def test_bootstrap_over_prompts_brackets_the_paired_difference():
    # Prompt A: a wins all 4 seeds; prompt B: a and b tie on all 4. Mean difference 0.5; resampling whole
    # prompts gives only 0, 0.5 or 1 (both B, one each, both A).
    a = [True] * 4 + [True, False, True, False]
    b = [False] * 4 + [True, False, True, False]
    prompts = ["A"] * 4 + ["B"] * 4
    mean, low, high = bootstrap_difference(a, b, prompts, draws=4000)
    assert mean == 0.5
    assert low == 0.0 and high == 1.0
    same = bootstrap_difference(a, a, prompts)
    assert same == (0.0, 0.0, 0.0)
    assert not math.isnan(bootstrap_difference([True], [False], ["A"])[1])
