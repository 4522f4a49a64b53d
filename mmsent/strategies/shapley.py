"""Shapley values over modality coalitions: AGM's per-modality contributions and sample-level
valuation's per-sample ones share them (a helper module, so no strategy imports another)."""
from __future__ import annotations

import itertools
import math

from torch import Tensor


def coalitions(modalities: list[str]) -> list[frozenset]:
    return [frozenset(c) for r in range(len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def shapley_contributions(values: dict[frozenset, Tensor], modalities: list[str]) -> dict[str, Tensor]:
    """``m_m = sum_S |S|!(N-|S|-1)!/N! (f(S + m) - f(S)) + f(empty)/N`` over S not holding m."""
    n = len(modalities)
    empty = values[frozenset()]
    out = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        total = empty / n
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for c in itertools.combinations(others, r):
                s = frozenset(c)
                total = total + w * (values[s | {m}] - values[s])
        out[m] = total
    return out
