"""How sure the report may be about a difference between configurations, from their seeds.

With one to three seeds per configuration, a difference in mean accuracy is often well inside seed
noise. These pure functions on lists of per-seed values give the mean with its 95% confidence
interval (Student's t), Welch's unequal-variance t-test between two configurations, the "tied"
verdict the findings use, and the number of seeds per configuration at which the measured
difference would be significant at the measured spread: every answer can be checked by hand.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

LEVEL = 0.95  # two-sided confidence of the intervals
ALPHA = 1 - LEVEL  # the significance level of the test
MOST_SEEDS = 1000  # beyond this many seeds, "would separate" is no advice


def present(values) -> list[float]:
    return [value for value in values if value is not None and not math.isnan(value)]


def mean_or_nan(values) -> float:
    found = present(values)
    return statistics.fmean(found) if found else math.nan


def std_or_nan(values) -> float:
    found = present(values)
    return statistics.stdev(found) if len(found) > 1 else math.nan


def t_quantile(degrees_of_freedom: int) -> float:
    """The two-sided LEVEL quantile of Student's t: 4.303 for 2 degrees of freedom."""
    return float(stats.t.ppf(1 - ALPHA / 2, degrees_of_freedom))


def ci_half_width(values) -> float:
    """Half the width of the mean's LEVEL confidence interval: t(n-1) x std / sqrt(n); NaN for one value."""
    found = present(values)
    if len(found) < 2:
        return math.nan
    return t_quantile(len(found) - 1) * statistics.stdev(found) / math.sqrt(len(found))


def welch_p(first, second) -> float:
    """Two-sided p-value of Welch's t-test that the two means are equal; NaN when either has one value.
    t = d / sqrt(s1^2/n1 + s2^2/n2), with Welch-Satterthwaite's degrees of freedom."""
    a, b = present(first), present(second)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    shares = [statistics.variance(a) / len(a), statistics.variance(b) / len(b)]
    difference = abs(statistics.fmean(a) - statistics.fmean(b))
    if sum(shares) == 0:  # no spread at all: equal or plainly not
        return 1.0 if difference == 0 else 0.0
    freedom = sum(shares) ** 2 / (shares[0] ** 2 / (len(a) - 1) + shares[1] ** 2 / (len(b) - 1))
    return float(2 * stats.t.sf(difference / math.sqrt(sum(shares)), freedom))


def tied(first, second) -> bool | None:
    """Whether the difference is within noise: the intervals overlap or the test is not significant
    at ALPHA. None when either has a single value: then nothing can be said."""
    a, b = present(first), present(second)
    if len(a) < 2 or len(b) < 2:
        return None
    overlap = abs(statistics.fmean(a) - statistics.fmean(b)) <= ci_half_width(a) + ci_half_width(b)
    return bool(overlap or welch_p(a, b) >= ALPHA)


def pooled_std(first, second) -> float:
    """sqrt(((n1-1) s1^2 + (n2-1) s2^2) / (n1 + n2 - 2)); NaN when either has a single value."""
    a, b = present(first), present(second)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    squares = (len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)
    return math.sqrt(squares / (len(a) + len(b) - 2))


def seeds_to_separate(first, second) -> float | None:
    """The fewest seeds n per configuration at which the measured difference d of the means, at the
    measured pooled spread s, would be significant: the smallest n >= 2 with
    n >= 2 (t(2n-2) s / d)^2. None when the spread is unknown (a single seed); infinity when the
    means are equal or more than MOST_SEEDS would be needed."""
    spread = pooled_std(first, second)
    if math.isnan(spread):
        return None
    difference = abs(mean_or_nan(first) - mean_or_nan(second))
    if difference == 0:
        return math.inf
    ratio = spread / difference
    fewest = max(2, math.ceil(2 * (float(stats.norm.ppf(1 - ALPHA / 2)) * ratio) ** 2))  # t >= z: none below
    for seeds in range(fewest, MOST_SEEDS + 1):
        if seeds >= 2 * (t_quantile(2 * seeds - 2) * ratio) ** 2:
            return seeds
    return math.inf
