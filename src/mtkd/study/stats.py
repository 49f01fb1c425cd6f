"""Statistics of a study: mean and spread over seeds, and paired t-tests between configurations.

Written from the definitions (Student's t distribution through the regularised incomplete beta
function) so the report needs no scipy; the tests check every number against scipy.stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        result *= delta
        if abs(delta - 1.0) < eps:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class TestResult:
    test: str  # the test used, in words
    n: int  # number of pairs (seeds)
    diff: float  # mean difference (a - b)
    diff_std: float  # standard deviation of the differences
    t: float
    p: float  # two-sided

    def to_dict(self) -> dict:
        return {
            "test": self.test,
            "n": self.n,
            "diff": self.diff,
            "diff_std": self.diff_std,
            "t": self.t,
            "p": self.p,
        }


def _t_test(diffs: list[float], test: str) -> TestResult:
    n = len(diffs)
    mean, sd = mean_std(diffs)
    if n < 2:
        return TestResult(test, n, mean, 0.0, math.nan, math.nan)
    if sd == 0.0:
        # Every pair differs by the same amount: no spread to test against.
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return TestResult(test, n, mean, 0.0, t, 1.0 if mean == 0.0 else 0.0)
    t = mean / (sd / math.sqrt(n))
    return TestResult(test, n, mean, sd, t, t_two_sided_p(t, n - 1))


def paired_t_test(a: list[float], b: list[float]) -> TestResult:
    """Two-sided paired t-test of a against b (pairs are seeds); diff is mean(a - b)."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs as many values on each side ({len(a)} vs {len(b)})")
    return _t_test([x - y for x, y in zip(a, b, strict=True)], "paired t-test over seeds")


def one_sample_t_test(a: list[float], reference: float) -> TestResult:
    """Two-sided one-sample t-test of a against a fixed reference value (e.g. a teacher adapted once)."""
    return _t_test([x - reference for x in a], "one-sample t-test over seeds against a fixed value")
