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


def _log_binom_pmf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """log P(K = k) for K ~ Binomial(n, p), elementwise over integer ``k``."""
    if p <= 0.0 or p >= 1.0:
        hit = k == (0 if p <= 0.0 else n)
        return np.where(hit, 0.0, -np.inf)
    lg = np.vectorize(math.lgamma)
    return lg(n + 1) - lg(k + 1) - lg(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def mcnemar_critical(d: int, alpha: float = 0.05) -> int:
    """Largest ``k`` such that ``min(gains, losses) <= k`` among ``d`` discordant problems is
    significant (exact two-sided McNemar p <= ``alpha``); -1 when no split is."""
    tail, k = 0, -1
    for i in range(d // 2 + 1):
        tail += math.comb(d, i)
        if 2 * tail / 2**d > alpha:
            break
        k = i
    return k


def mcnemar_power(n: int, discordant: float, delta: float, alpha: float = 0.05) -> float:
    """Probability that the exact McNemar test at ``alpha`` finds an improvement of
    ``delta`` (a share, 0.06 = 6 points) on ``n`` paired problems, of which a share
    ``discordant`` (gains + losses) have different verdicts. Counts rejections in the
    direction of the improvement only."""
    if not 0 < discordant <= 1 or delta <= 0:
        return 0.0
    if delta > discordant:
        raise ValueError("an improvement cannot exceed the share of discordant problems")
    p_gain = (discordant + delta) / 2 / discordant  # a discordant problem is a gain
    ds = np.arange(n + 1)
    p_d = np.exp(_log_binom_pmf(ds, n, discordant))
    power = 0.0
    for d in ds[p_d > 1e-12]:
        k = mcnemar_critical(int(d), alpha)
        if k < 0:
            continue
        losses = np.arange(k + 1)  # gains = d - losses >= d - k
        power += p_d[d] * float(np.exp(_log_binom_pmf(int(d) - losses, int(d), p_gain)).sum())
    return float(power)


def minimum_detectable_effect(n: int, discordant: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest improvement (points) that :func:`mcnemar_power` detects with probability
    ``power``, given ``n`` problems and a discordant share; ``inf`` when none up to the
    discordant share does (found by bisection to 0.01 points)."""
    if n == 0 or discordant <= 0 or mcnemar_power(n, discordant, discordant, alpha) < power:
        return math.inf
    lo, hi = 0.0, discordant
    while (hi - lo) * 100 > 0.01:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if mcnemar_power(n, discordant, mid, alpha) >= power else (mid, hi)
    return 100 * hi
