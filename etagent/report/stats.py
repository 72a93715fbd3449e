"""Uncertainty for the numbers a report shows.

* :func:`wilson_interval`  95% Wilson score interval of a proportion (Wilson 1927; the "score"
  method in Newcombe 1998). Used for rates of 0/1 outcomes over trajectories (correctness
  on math/EM, behaviour rates): unlike mean ± 1.96 se it stays inside [0, 1] and is not
  zero-width at 0% or 100%.
* :func:`mean_interval`    normal-approximation 95% interval of a mean of bounded per-trajectory
  values (QA F1 correctness, efficiency, tokens ...).
* :func:`change_outside`   whether a value lies outside another policy's interval, for the
  report's "what changed" line.

No scipy here (not a dependency): the z value for 95% is the constant below.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

Z95 = 1.959963984540054  # standard normal 97.5% quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """(low, high) for ``successes`` out of ``n`` (successes may be a rate x n, rounded)."""
    if n <= 0:
        return None, None
    k = min(max(float(successes), 0.0), float(n))
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # exact ends at 0 and n (the formula gives them up to rounding)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """mean ± z * sample std / sqrt(n); (None, None) with fewer than two values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) < 2:
        return None, None
    m, s = statistics.fmean(vals), statistics.stdev(vals)
    half = z * s / math.sqrt(len(vals))
    return m - half, m + half


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1, 0.0, 1.0, True, False) for v in values)


def interval(values: Sequence[float], share: bool) -> tuple[float, float] | tuple[None, None]:
    """Wilson when ``share`` (a share of 0/1 outcomes), else the normal interval of the mean."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    if share:
        if not is_binary(vals):
            raise ValueError("interval: a share needs 0/1 values")
        return wilson_interval(sum(vals), len(vals))
    return mean_interval(vals)


def change_outside(value: float | None, low: float | None, high: float | None) -> bool | None:
    """True when ``value`` lies outside [low, high]; None when there is no interval."""
    if value is None or low is None or high is None:
        return None
    return value < low or value > high
