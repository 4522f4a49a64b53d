"""LFM (`mmsent/strategies/lfm.py`) against oracles worked by hand from its reference's semantics (shared
docs/research/balancemm-methods.md, which reads the official code or BalanceBenchmark's), at N = 2 first, then
the N > 2 extension reducing to it, and its step on a real model against a loss written here independently of
mmsent's code. Reference read: NeurIPS24-LFM Crema_epoch.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.strategies import STRATEGIES
from mmsent.strategies.lfm import alpha_cls, js_divergence, reference_alignment
from mmsent.tasks import Classification

from helpers import model64 as _model, step_matches as _step_matches, sgd as _opt


def test_lfm_alpha_schedule_matches_the_references_values():
    """The fitted polynomial's values listed by the spec: 0.205 (t=0), 0.248 (10), 0.437 (50),
    0.539 (100), 0.821 (150); held at t = 199 beyond it."""
    for t, want in [(0, 0.2046), (10, 0.248), (50, 0.437), (100, 0.539), (150, 0.821), (199, 0.916)]:
        assert alpha_cls(t) == pytest.approx(want, abs=1e-3), t
    assert alpha_cls(400) == alpha_cls(199)


def test_lfm_js_oracle():
    """p_a = (0.5, 0.5), p_v = (0.75, 0.25): r = (0.625, 0.375); JS = (KL(p_a||r) + KL(p_v||r)) / 2."""
    pa, pv, r = [0.5, 0.5], [0.75, 0.25], [0.625, 0.375]
    kl = lambda p: sum(x * math.log(x / y) for x, y in zip(p, r))  # noqa: E731
    want = (kl(pa) + kl(pv)) / 2
    got = js_divergence(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]))
    assert float(got) == pytest.approx(want, rel=1e-6) and want == pytest.approx(0.033822, abs=1e-6)


def test_lfm_reference_alignment_oracle():
    """The reference's term, by hand: p_a = (0.5, 0.5), p_v = (0.75, 0.25), r = (0.625, 0.375);
    (KL(r||p_a) + KL(r||p_v)) / 2 -- r on the left, unlike the textbook JS above."""
    pa, pv, r = [0.5, 0.5], [0.75, 0.25], [0.625, 0.375]
    kl = lambda p: sum(x * math.log(x / y) for x, y in zip(r, p))  # noqa: E731
    want = (kl(pa) + kl(pv)) / 2
    got = reference_alignment(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]))
    assert float(got) == pytest.approx(want, rel=1e-6) and want == pytest.approx(0.034841, abs=1e-6)


def test_lfm_schedule_spans_the_run():
    """The polynomial's 200 epochs stretched over the run's budget: a 40-epoch run's epoch 20 reads
    alpha_1(100), its last epoch alpha_1(195); span: 200 keeps the reference's clock."""
    ds, model = _model(n=2, fusion="late_mean")
    s = STRATEGIES["lfm"](model, _opt(model), Classification(3), epochs=40)
    batch = ds.train.batch(torch.arange(12))
    for epoch, t in ((0, 0), (20, 100), (39, 195)):
        s.on_epoch_start(epoch, ds)
        assert s.train_step(batch)["alpha_cls"] == pytest.approx(alpha_cls(t))
    s = STRATEGIES["lfm"](model, _opt(model), Classification(3), epochs=40, span=200)
    s.on_epoch_start(20, ds)
    assert s.train_step(batch)["alpha_cls"] == pytest.approx(alpha_cls(20))


def test_lfm_step_is_twice_the_weighted_sum_on_per_modality_classifiers():
    """Model: per-modality linear classifiers, prediction their mean; at epoch 10 the loss is
    2 (alpha_1 CE(mean_m o_m) + (1 - alpha_1) JS(p_a, p_v)), alpha_1 = 0.248 (alignment: js, the
    textbook option)."""
    ds, model = _model(n=2, fusion="late_mean")
    s = STRATEGIES["lfm"](model, _opt(model), Classification(3), alignment="js")
    s.on_epoch_start(10, ds)
    batch = ds.train.batch(torch.arange(12))
    f = model.encode(batch)
    o = {m: model.head.fc[m](f[m].mean(1)) for m in model.modalities}
    a, v = o.values()
    pa, pv = a.softmax(-1), v.softmax(-1)
    r = (pa + pv) / 2
    js = 0.5 * ((pa * (pa / r).log()).sum(-1) + (pv * (pv / r).log()).sum(-1)).mean()
    a1 = alpha_cls(10)
    ref = 2 * (a1 * F.cross_entropy((a + v) / 2, batch.y.long()) + (1 - a1) * js)
    logs = _step_matches(model, s, batch, ref)
    assert logs["alpha_cls"] == pytest.approx(0.248, abs=1e-3)
