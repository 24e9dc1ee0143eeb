"""The statistics of the benchmark: intervals for a share and paired tests between two methods run on the
same (prompt, seed) pairs. Plain numpy and math, so the numbers can be checked by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial share (95 % by default)."""
    if total == 0:
        return (0.0, 1.0)
    share = successes / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Exact two-sided McNemar test on paired outcomes: (pairs only `a` got right, pairs only `b` got right,
    p). Under the null each discordant pair is a fair coin; p = min(1, 2·P(X ≤ min(n01, n10)))."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths: {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    if discordant == 0:
        return only_a, only_b, 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1)) / 2**discordant
    return only_a, only_b, min(1.0, 2 * tail)


def bootstrap_difference(
    a: Sequence[bool], b: Sequence[bool], clusters: Sequence[object], draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a − b with a 95 % percentile interval from resampling whole clusters (prompts) with
    replacement: the seeds of one prompt are not independent of each other."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    names = list(dict.fromkeys(clusters))
    index = {name: i for i, name in enumerate(names)}
    labels = np.asarray([index[c] for c in clusters])
    sums = np.bincount(labels, weights=a - b, minlength=len(names))
    counts = np.bincount(labels, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(draws, len(names)))
    estimates = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(estimates, [2.5, 97.5])
    return float((a - b).mean()), float(low), float(high)
