"""ReconBoost (`mmsent/strategies/reconboost.py`) against oracles worked by hand from its reference's semantics
(shared docs/research/balancemm-methods.md, which reads the official code or BalanceBenchmark's), at N = 2
first, then the N > 2 extension reducing to it, and its step on a real model against a loss written here
independently of mmsent's code. Reference read: huacong/ReconBoost train.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.strategies import STRATEGIES
from mmsent.strategies.reconboost import learner_weights
from mmsent.tasks import Classification, Regression

from helpers import model64 as _model, step_matches as _step_matches, sgd as _opt


def test_reconboost_per_sample_weight_and_loss_oracle():
    """w1 = 5, w2 = 1. Others' ensemble logits (0, ln 3): q = (1/4, 3/4); y = 1 -> weight 5 - 0.75 =
    4.25, y = 0 -> 4.75. Learner p = softmax(ln 3, 0) = (3/4, 1/4) for y = 0: l = -4.75 log(3/4) / 2."""
    task = Classification(2)
    others = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    w = learner_weights(task, others, torch.tensor([1, 0]), 5.0, 1.0)
    torch.testing.assert_close(w, torch.tensor([4.25, 4.75]))
    # bounded: w1 - w2 <= weight <= w1 for any logits, so the loss is a positively weighted CE
    big = torch.randn(200, 4) * 20
    wb = learner_weights(Classification(4), big, torch.randint(0, 4, (200,)), 5.0, 1.0)
    assert float(wb.min()) >= 4.0 and float(wb.max()) <= 5.0
    # the docstring's loss, from the pieces the step multiplies (weight x the task's per-sample CE / C);
    # tests/test_golden.py::test_reconboost_equals_the_reference checks the step's loss against the reference
    p = torch.tensor([[math.log(3), 0.0]])
    y0 = torch.tensor([0])
    l = learner_weights(task, others[:1], y0, 5.0, 1.0) * task.per_sample(p, y0) / 2
    assert float(l) == pytest.approx(-4.75 * math.log(0.75) / 2)


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_reconboost_learner_phase_trains_one_learner_on_the_reweighted_loss(task_name):
    """Phase 1 of stage 1 (E1 = E2 = 1, learner = the second modality; the ensemble holds the first
    modality's learner only, the third has had no stage): the gradient equals autograd of
    mean_i (w1 - w2 q_i[y]) l(H(f_m), y_i) / C with q from beta * H(f_first) (no gradient); the
    other encoders and beta get none."""
    ds, model = _model(n=3, task_name=task_name, fusion="shared")
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["reconboost"](model, _opt(model), task, w1=5.0, w2=1.0, learner_epochs=1, rectify_epochs=1)
    s.on_epoch_start(2, ds)
    batch = ds.train.batch(torch.arange(12))
    first, m, third = model.modalities
    assert s.learner == m and s.added == [first]
    f = model.encode(batch)
    H, beta = model.head.shared, model.head.beta
    with torch.no_grad():
        ens = beta * H(f[first].mean(1))
    fm = H(f[m].mean(1))
    if task_name == "classification":
        q = ens.softmax(-1).gather(1, batch.y.long()[:, None]).squeeze(1)
        ref = ((5 - q) * F.cross_entropy(fm, batch.y.long(), reduction="none")).mean() / 3
    else:
        c = torch.exp(-(ens.reshape(-1) - batch.y).abs())
        ref = ((5 - c) * (fm.reshape(-1) - batch.y).abs()).mean()
    _step_matches(model, s, batch, ref)
    assert beta.grad is None and all(p.grad is None for k in (first, third) for p in model.encoders[k].parameters())


def test_reconboost_stage_zero_has_no_ensemble_yet():
    """Stage 0, before any learner is trained (the reference's placeholder ensemble gives q[y] = 1):
    the first learner's loss is the uniformly weighted (w1 - w2) CE / C; the rectification that
    follows trains only that learner, H and beta on CE(beta H(f_first)); until the second stage adds
    its learner, the model predicts from the first learner alone."""
    ds, model = _model(n=2, fusion="shared")
    s = STRATEGIES["reconboost"](model, _opt(model), Classification(3), w1=5.0, w2=1.0, learner_epochs=1,
                                 rectify_epochs=1)
    batch = ds.train.batch(torch.arange(8))
    first, second = model.modalities
    H, beta = model.head.shared, model.head.beta
    s.on_epoch_start(0, ds)
    assert s.added == [] and s.learner == first
    ref = 4.0 * F.cross_entropy(H(model.encode(batch)[first].mean(1)), batch.y.long()) / 3
    _step_matches(model, s, batch, ref)
    s.on_epoch_start(1, ds)
    assert s.added == [first]
    ref = F.cross_entropy(beta * H(model.encode(batch)[first].mean(1)), batch.y.long())
    _step_matches(model, s, batch, ref)
    assert beta.grad is not None and all(p.grad is None for p in model.encoders[second].parameters())
    torch.testing.assert_close(s.predict(batch), beta.detach() * H(model.encode(batch)[first].mean(1)).detach())


def test_reconboost_stage_schedule_and_fresh_optimizer_per_phase():
    """E1 = 2, E2 = 1 over two modalities: epochs 0-1 learner a, 2 rectify, 3-4 learner v, 5 rectify,
    6 learner a again; the optimizer's state (momentum) is dropped when a phase begins."""
    ds, model = _model(n=2, fusion="shared")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    s = STRATEGIES["reconboost"](model, opt, Classification(3), learner_epochs=2, rectify_epochs=1)
    batch = ds.train.batch(torch.arange(8))
    a, v = model.modalities
    seen = []
    for epoch in range(7):
        s.on_epoch_start(epoch, ds)
        if epoch in (0, 2, 3, 5, 6):
            assert len(opt.state) == 0, epoch
        logs = s.train_step(batch)
        seen.append("rectify" if "rectify" in logs else s.learner)
        assert len(opt.state) > 0
    assert seen == [a, a, "rectify", v, v, "rectify", a]


def test_reconboost_rectification_trains_everything_on_the_ensemble():
    """Phase 2 once every modality has had a stage: CE(y, beta * sum_m H(f_m)) over every encoder,
    H and beta."""
    ds, model = _model(n=2, fusion="shared")
    s = STRATEGIES["reconboost"](model, _opt(model), Classification(3), learner_epochs=1, rectify_epochs=1)
    s.on_epoch_start(3, ds)
    batch = ds.train.batch(torch.arange(8))
    f = model.encode(batch)
    H = model.head.shared
    ref = F.cross_entropy(model.head.beta * sum(H(x.mean(1)) for x in f.values()), batch.y.long())
    _step_matches(model, s, batch, ref)
    assert model.head.beta.grad is not None


def test_reconboost_refuses_heads_without_a_shared_classifier():
    ds, model = _model(n=2, fusion="concat", hidden=0)
    with pytest.raises(ValueError, match="set model.fusion=shared"):
        STRATEGIES["reconboost"](model, _opt(model), Classification(3))
