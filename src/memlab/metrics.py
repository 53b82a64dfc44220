"""Metrics: exact match, a Wilson score interval for it, and a tiny name -> function registry."""

from __future__ import annotations

import math
from typing import Callable


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion correct/n (z=1.96 -> 95%).

    n == 0 gives the uninformative (0.0, 1.0). Bounds are clipped to [0, 1].
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def exact_match(pred: str, gold: str) -> bool:
    """True when pred and gold are equal after stripping whitespace and ignoring case."""
    return pred.strip().casefold() == gold.strip().casefold()


METRICS: dict[str, Callable[[str, str], bool]] = {"exact_match": exact_match}


def get_metric(name: str) -> Callable[[str, str], bool]:
    """Look up a metric by name; unknown names raise KeyError listing the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        known = ", ".join(sorted(METRICS))
        raise KeyError(f"unknown metric {name!r}; known metrics: {known}") from None
