"""Is a difference in accuracy real? Pure functions on paired per-problem outcomes.

Two methods evaluated on the same problems give, per problem, ``a_i`` and ``b_i`` (1 if
correct). The difference in accuracy (points) is ``100 * mean(b - a)``:

- its 95% confidence interval is a paired bootstrap: problems are drawn with replacement
  (the same draw for both methods), ``resamples`` times (10,000 by default, seeded), and
  the 2.5th and 97.5th percentiles of the resampled differences are the interval;
- its p-value is the exact McNemar test: of the discordant problems (one method right,
  the other wrong), how surprising the split is if each side were equally likely
  (two-sided binomial test at 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of paired outcomes ``a``, ``b`` (1.0 without discordant pairs)."""
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a, b, strict=True))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_ci(
    groups: Sequence[tuple[Sequence[bool], Sequence[bool]]],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Paired bootstrap interval (points) of the mean over ``groups`` of each group's
    accuracy difference ``b - a``; each group (a benchmark) is resampled on its own. One
    group gives the interval of a plain accuracy difference."""
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(b, dtype=float) - np.asarray(a, dtype=float) for a, b in groups]
    stats = np.zeros(resamples)
    chunk = max(1, 2_000_000 // max(len(d) for d in diffs))  # bounds memory: chunk x n indices
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        for d in diffs:
            idx = rng.integers(0, len(d), size=(m, len(d)))
            stats[start : start + m] += d[idx].mean(axis=1) / len(diffs)
    lo, hi = np.quantile(100 * stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_difference(
    groups: Sequence[tuple[Sequence[bool], Sequence[bool]]], resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """``delta`` (points, mean over groups of the accuracy difference), ``ci95`` and the
    exact McNemar ``p_value`` over all problems pooled, with ``n`` problems and the
    discordant counts."""
    n = sum(len(a) for a, _ in groups)
    delta = sum(100 * (sum(map(bool, b)) - sum(map(bool, a))) / len(a) for a, b in groups) / len(groups)
    a_all = [x for a, _ in groups for x in a]
    b_all = [y for _, b in groups for y in b]
    return {
        "n": n,
        "delta": delta,
        "ci95": list(bootstrap_ci(groups, resamples, seed)),
        "p_value": mcnemar_exact(a_all, b_all),
        "only_first": sum(bool(x) and not bool(y) for x, y in zip(a_all, b_all)),
        "only_second": sum(bool(y) and not bool(x) for x, y in zip(a_all, b_all)),
    }


def verdict(p_value: float, alpha: float = 0.05) -> str:
    return f"significant at {alpha}" if p_value < alpha else f"not significant at {alpha} (could be noise)"
