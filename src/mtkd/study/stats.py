"""Statistics of a study: means over seeds, confidence intervals of differences (scipy.stats),
and the reading of an interval against zero and an equivalence margin.

An interval is read three ways (the TOST reading of equivalence): it lies inside
(-margin, +margin), a difference too small to matter; else it lies above zero, or below zero;
else it straddles a boundary and the question is not settled. A study that looks at its
results several times (sequential seeds) gives each look alpha / looks (a Bonferroni split),
so the chance of a false answer over all looks stays at most alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy import special


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@lru_cache(maxsize=4096)
def t_quantile(level: float, df: float) -> float:
    """The two-sided critical value of Student's t: P(|T| <= q) = level (scipy.stats.t.ppf's own
    function, called directly: studies are simulated thousands of times in the tests)."""
    return float(special.stdtrit(df, 0.5 + level / 2))


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t (as 2 * scipy.stats.t.sf(|t|, df))."""
    return float(2 * special.stdtr(df, -abs(t)))


def look_level(alpha: float, looks: int) -> float:
    """The confidence level of each of `looks` looks at the data (Bonferroni: alpha / looks each)."""
    return 1.0 - alpha / looks


@dataclass(frozen=True)
class Interval:
    """A difference (a - b, in accuracy) with its confidence interval [lo, hi] at `level`."""

    test: str  # the test, in words
    n: int  # seeds (pairs) on the first side
    diff: float  # the estimate
    sd: float  # standard deviation of the differences (paired, one-sample) or of side a (two-sample)
    lo: float
    hi: float
    level: float
    p: float  # two-sided p of "no difference" (nan when there is no test)
    n_other: int = 0  # seeds on the other side of a two-sample comparison (0: none, a fixed value)
    sd_other: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def half_width(self, n: int | None = None, n_other: int | None = None) -> float:
        """Half the interval's width, or what it would be with `n` seeds on the first side (and
        `n_other` on the other) at the observed spreads (for 'how many seeds would settle it')."""
        n = self.n if n is None else n
        m = self.n_other if n_other is None else n_other
        if n < 2:
            return math.inf
        if self.n_other < 2:
            return t_quantile(self.level, n - 1) * self.sd / math.sqrt(n)
        va, vb = self.sd**2 / n, self.sd_other**2 / m
        df = _welch_df(va, vb, n, m)
        return t_quantile(self.level, df) * math.sqrt(va + vb)


def _welch_df(va: float, vb: float, na: int, nb: int) -> float:
    if va + vb == 0:
        return float(na + nb - 2)
    return (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))


def _no_interval(test: str, n: int, diff: float, level: float) -> Interval:
    return Interval(test, n, diff, 0.0, -math.inf, math.inf, level, math.nan)


def _t_interval(diffs: list[float], level: float, test: str) -> Interval:
    n = len(diffs)
    mean, sd = mean_std(diffs)
    if n < 2:
        return _no_interval(test, n, mean, level)
    if sd == 0.0:
        # Every pair differs by the same amount: no spread, the interval is that value.
        return Interval(test, n, mean, 0.0, mean, mean, level, 1.0 if mean == 0.0 else 0.0)
    se = sd / math.sqrt(n)
    q = t_quantile(level, n - 1)
    p = t_two_sided_p(mean / se, n - 1)
    return Interval(test, n, mean, sd, mean - q * se, mean + q * se, level, p)


def paired_interval(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """mean(a - b) over pairs (seeds), with Student's t interval of the paired differences."""
    if len(a) != len(b):
        raise ValueError(f"a paired interval needs as many values on each side ({len(a)} vs {len(b)})")
    return _t_interval([x - y for x, y in zip(a, b, strict=True)], level, "paired t over seeds")


def one_sample_interval(a: list[float], reference: float, level: float = 0.95) -> Interval:
    """mean(a) - reference, with Student's t interval (the reference is one fixed value)."""
    return _t_interval([x - reference for x in a], level, "one-sample t against a fixed value")


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """mean(a) - mean(b) for two independent sets of seeds (Welch's t, unequal spreads); with one
    value in b, the one-sample interval against it."""
    if len(b) == 1:
        return one_sample_interval(a, b[0], level)
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    na, nb, test = len(a), len(b), "Welch t, student seeds against teacher seeds"
    if na < 2:
        return _no_interval(test, na, ma - mb, level)
    va, vb = sa**2 / na, sb**2 / nb
    if va + vb == 0.0:
        d = ma - mb
        return Interval(test, na, d, 0.0, d, d, level, 1.0 if d == 0.0 else 0.0, nb, 0.0)
    df, se = _welch_df(va, vb, na, nb), math.sqrt(va + vb)
    q = t_quantile(level, df)
    p = t_two_sided_p((ma - mb) / se, df)
    return Interval(test, na, ma - mb, sa, ma - mb - q * se, ma - mb + q * se, level, p, nb, sb)


ABOVE, BELOW, EQUIVALENT, UNSETTLED = "above", "below", "equivalent", "unsettled"


def reading(iv: Interval, margin: float) -> str:
    """equivalent (inside +-margin: no difference that matters), above or below zero, or unsettled."""
    if iv.n < 2 and iv.n_other < 2:
        return UNSETTLED
    if -margin < iv.lo and iv.hi < margin:
        return EQUIVALENT
    if iv.lo > 0:
        return ABOVE
    if iv.hi < 0:
        return BELOW
    return UNSETTLED


def seeds_to_settle(iv: Interval, margin: float, limit: int = 1000) -> int | None:
    """Seeds (on the first side) whose interval, at the observed difference and spread, would be
    narrow enough to settle: to clear zero, or to fit inside the margin. None past `limit`."""
    d = abs(iv.diff)
    target = max(d, margin - d)
    if target <= 0 or (iv.sd == 0 and iv.sd_other == 0):
        return None
    lo, hi = max(iv.n, 2), limit
    if iv.half_width(hi) >= target:
        return None
    while lo < hi:  # the half width shrinks as seeds are added: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if iv.half_width(mid) >= target else (lo, mid)
    return lo


def teacher_seeds_to_settle(iv: Interval, margin: float, n: int, limit: int = 100) -> int | None:
    """Teacher seeds (the other side of a Welch interval) that, with `n` student seeds at the
    observed spreads, would settle it; None past `limit` or for a one-sample interval."""
    d = abs(iv.diff)
    target = max(d, margin - d)
    if iv.n_other < 2 or target <= 0 or iv.half_width(n, limit) >= target:
        return None
    lo, hi = max(iv.n_other, 2), limit
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if iv.half_width(n, mid) >= target else (lo, mid)
    return lo
