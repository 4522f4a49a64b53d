"""Sample-level modality valuation (`mmsent/strategies/valuation.py`) against oracles worked by hand from its
reference's semantics (shared docs/research/balancemm-methods.md, which reads the official code or
BalanceBenchmark's), at N = 2 first, then the N > 2 extension reducing to it, and its step on a real model
against a loss written here independently of mmsent's code. Reference read: Valuate-and-Enhance
sample_level.py."""
import pytest
import torch
import torch.nn.functional as F

from mmsent.dgl import keep_only
from mmsent.strategies import STRATEGIES
from mmsent.strategies.valuation import copy_counts, sample_shapley
from mmsent.tasks import Classification, Regression

from helpers import model64 as _model, step_matches as _step_matches, sgd as _opt


def _phi2(full, a, v):
    """The reference's two-modality Shapley values with v(S) = |S| * correct."""
    va, vv, vav = float(a), float(v), 2.0 * full
    return (va + vav - vv) / 2, (vv + vav - va) / 2


@pytest.mark.parametrize("full,a,v,want", [
    (1, 1, 1, (0, 0)),  # everything right: no copies
    (1, 1, 0, (0, 1)),  # full right, only a right: one copy of v
    (0, 0, 0, (2, 2)),  # everything wrong: two of each
    (0, 1, 0, (1, 3)),  # full wrong, only a right: one of a, three of v
    (0, 1, 1, (2, 2)),  # full wrong, both branches right: two of each
])
def test_valuation_copy_counts_for_the_specs_five_cases(full, a, v, want):
    correct = {frozenset(["a"]): torch.tensor([a]), frozenset(["v"]): torch.tensor([v]),
               frozenset(["a", "v"]): torch.tensor([full])}
    phi = sample_shapley(correct, ["a", "v"])
    assert (float(phi["a"][0]), float(phi["v"][0])) == pytest.approx(_phi2(full, a, v))
    assert (int(copy_counts(phi["a"])[0]), int(copy_counts(phi["v"])[0])) == want


def test_valuation_copy_table_boundaries():
    """3 / 2 / 1 / 0 for phi < -0.1, in (-0.1, 0.4), in (0.4, 1), >= 1; the boundaries give 0."""
    phi = torch.tensor([-0.5, -0.1, 0.0, 0.4, 0.5, 0.99, 1.0, 1.5])
    assert copy_counts(phi).tolist() == [3, 0, 2, 0, 1, 1, 0, 0]


def test_valuation_n_modality_shapley_reduces_to_two_and_sums_to_the_full_value():
    """The exact N-way Shapley at N = 2 is the reference's closed form for all 8 outcomes; at N = 3
    the values sum to v(all) = 3 * correct(all) (an even share stays 1)."""
    for full, a, v in [(f, x, y) for f in (0, 1) for x in (0, 1) for y in (0, 1)]:
        correct = {frozenset(["a"]): torch.tensor([a]), frozenset(["v"]): torch.tensor([v]),
                   frozenset(["a", "v"]): torch.tensor([full])}
        phi = sample_shapley(correct, ["a", "v"])
        assert (float(phi["a"][0]), float(phi["v"][0])) == pytest.approx(_phi2(full, a, v))
    gen = torch.Generator().manual_seed(0)
    mods = ["t", "a", "v"]
    correct = {frozenset(c): (torch.rand(50, generator=gen) > 0.5).long()
               for r in (1, 2, 3) for c in __import__("itertools").combinations(mods, r)}
    phi = sample_shapley(correct, mods)
    torch.testing.assert_close(sum(phi.values()), 3.0 * correct[frozenset(mods)].float())


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_valuation_warms_up_then_adds_every_modalitys_copies(task_name):
    """No plan during the warm-up epochs; from epoch W on the step's loss is
    (1/B)[sum_i l_i + sum_i sum_m c_i^m l(h(x_i^m only), y_i)] with c from the table, the values
    worked here from the model's own coalition predictions."""
    ds, model = _model(n=2, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["valuation"](model, _opt(model), task, warmup=2)
    batch = ds.train.batch(torch.arange(12))
    for epoch in range(2):
        s.on_epoch_start(epoch, ds)
        assert s.copies is None and s.train_step(batch)["resampled"] == 0
    s.on_epoch_start(2, ds)
    right = (lambda p, y: p.argmax(-1) == y) if task_name == "classification" else (lambda p, y: (p.reshape(-1) >= 0) == (y >= 0))
    mods = tuple(model.modalities)
    model.eval()
    with torch.no_grad():
        feats = model.encode(ds.train.batch(torch.arange(len(ds.train))))
        ok = {S: right(model.head(keep_only(feats, S)), ds.train.y).double() for S in (mods[:1], mods[1:], mods)}
    model.train()
    phi_a = (ok[mods[:1]] + 2 * ok[mods] - ok[mods[1:]]) / 2
    phi_v = (ok[mods[1:]] + 2 * ok[mods] - ok[mods[:1]]) / 2
    table = lambda p: torch.where(p < -0.1, 3, torch.where(p < 0.4, 2, torch.where(p < 1, 1, 0)))  # noqa: E731  (no boundary values at N = 2)
    c = torch.stack([table(phi_a), table(phi_v)], 1)
    assert torch.equal(s.copies, c)
    sub = c[:12]
    assert sub.sum() > 0
    loss = lambda p: (F.cross_entropy(p, batch.y.long(), reduction="none") if task_name == "classification"  # noqa: E731
                      else (p.reshape(-1) - batch.y).abs())
    feats = model.encode(batch)
    ref = loss(model.head(feats)).mean()
    for k, m in enumerate(mods):
        ref = ref + (sub[:, k].double() * loss(model.head(keep_only(feats, [m])))).sum() / 12
    logs = _step_matches(model, s, batch, ref)
    assert logs["resampled"] == pytest.approx(float(sub.sum()) / 12)
