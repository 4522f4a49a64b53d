"""MBSD (`mmsent/strategies/mbsd.py`) against oracles worked by hand from its reference's semantics (shared
docs/research/balancemm-methods.md, which reads the official code or BalanceBenchmark's), at N = 2 first, then
the N > 2 extension reducing to it, and its step on a real model against a loss written here independently of
mmsent's code. Reference read: BalanceBenchmark MBSD_trainer.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.strategies import STRATEGIES
from mmsent.strategies.mbsd import distillation, pair_terms
from mmsent.tasks import Classification

from helpers import model64 as _model, step_matches as _step_matches, sgd as _opt


def test_mbsd_pair_terms_oracle():
    """C = 2. Sample 0: z_a = (ln 4, 0) -> p_a[y=0] = 0.8 (right), z_v = (0, 0) -> 0.5:
    w = 0.3, RS = ((ln 4)^2 + 0) / 2, KL(p_a || p_v) = 0.8 ln 1.6 + 0.2 ln 0.4.
    Sample 1: both argmax wrong (y = 1, z_a = (ln 4, 0), z_v = (1, 0)) -> w = 0."""
    task = Classification(2)
    za = torch.tensor([[math.log(4), 0.0], [math.log(4), 0.0]])
    zv = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    w, rs, kl = pair_terms(task, za, zv, torch.tensor([0, 1]))
    assert w.tolist() == pytest.approx([0.3, 0.0])
    assert float(rs[0]) == pytest.approx(math.log(4) ** 2 / 2)
    assert float(kl[0]) == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    # the strong side is detached: the distribution term moves only the weak side
    za_, zv_ = za[:1].clone().requires_grad_(), zv[:1].clone().requires_grad_()
    pair_terms(task, za_, zv_, torch.tensor([0]))[2].sum().backward()
    assert za_.grad.abs().max() == 0 and zv_.grad.abs().max() > 0


def test_mbsd_pairs_average_at_three_modalities():
    """N = 3 [BB]: the mean over the three pairs of the per-pair batch means."""
    task = Classification(3)
    torch.manual_seed(0)
    z = {m: torch.randn(5, 3) for m in "tav"}
    y = torch.randint(0, 3, (5,))
    rs, kl = distillation(task, z, y)
    want_rs = want_kl = 0.0
    for a, b in [("t", "a"), ("t", "v"), ("a", "v")]:
        w, r, k = pair_terms(task, z[a], z[b], y)
        want_rs, want_kl = want_rs + float((w * r).mean()) / 3, want_kl + float((w * k).mean()) / 3
    assert float(rs) == pytest.approx(want_rs) and float(kl) == pytest.approx(want_kl)


def test_mbsd_step_is_fused_plus_unimodal_ce_plus_weighted_terms():
    """Linear concat head, N = 2: L = CE(fused) + sum_m CE(z_m) + mean(w RS) + mean(w KL) with
    z_m = W_m f_m + b/2, written from the reference's semantics (w keeps its gradient, as BB)."""
    ds, model = _model(n=2, fusion="concat", hidden=0)
    s = STRATEGIES["mbsd"](model, _opt(model), Classification(3))
    batch = ds.train.batch(torch.arange(12))
    y = batch.y.long()
    f = model.encode(batch)
    fc = model.head.net
    za, zv = (f[m].mean(1) @ w.T + fc.bias / 2 for m, w in zip(model.modalities, fc.weight.chunk(2, 1)))
    pa, pv = za.softmax(-1).gather(1, y[:, None])[:, 0], zv.softmax(-1).gather(1, y[:, None])[:, 0]
    ok = ((za.argmax(-1) == y) | (zv.argmax(-1) == y)).double()
    w = (torch.maximum(pa, pv) - torch.minimum(pa, pv)) * ok
    rs = ((za - zv) ** 2).mean(-1)
    a_strong = (pa >= pv)[:, None]
    strong, weak = torch.where(a_strong, za, zv).detach(), torch.where(a_strong, zv, za)
    kl = (strong.softmax(-1) * (strong.log_softmax(-1) - weak.log_softmax(-1))).sum(-1)
    ref = (F.cross_entropy(model.head(f), y) + F.cross_entropy(za, y) + F.cross_entropy(zv, y)
           + (w * rs).mean() + (w * kl).mean())
    assert float(w.detach().sum()) > 0
    _step_matches(model, s, batch, ref)
