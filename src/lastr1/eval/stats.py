"""Confidence intervals for success rates."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial rate (sane at 0 % and 100 %, unlike the normal one)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of a normal-approximation 95 % interval (over seeds)."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    m = sum(values) / n
    if n == 1:
        return (m, float("nan"))
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return (m, z * sd / math.sqrt(n))


# two-sided 95 % Student-t quantiles t_{0.975, df}; beyond the table the normal 1.96 is within 2 %
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
_T975.update({10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042})


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % Student-t interval: honest for the 3-5 seeds we can afford."""
    df = len(values) - 1
    t = _T975.get(df) or next((v for k, v in sorted(_T975.items()) if k >= df), 1.96)
    return mean_ci(values, z=t)
