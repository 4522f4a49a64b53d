"""MLA (`mmsent/strategies/mla.py`) against the numeric oracles of shared/docs/research/baselines.md §13, its
N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.mla import entropy_weights, project
from mmsent.tasks import Classification, Regression


def test_mla_entropy_weights_oracle():
    w = entropy_weights({"a": torch.tensor([[3.0, 0, 0]]), "v": torch.tensor([[0.5, 0.2, 0]]),
                         "t": torch.tensor([[1.0, 1, 0]])})
    assert [float(w[m]) for m in "avt"] == pytest.approx([0.496768, 0.244095, 0.259138], abs=1e-6)


def test_mla_projector_identity():
    P, r, a = torch.eye(4, dtype=torch.float64), torch.tensor([1.0, 2, 0, 0], dtype=torch.float64), 0.1
    k = P @ r
    unnormalised = P - torch.outer(k, k) / (a + r @ k)
    assert (unnormalised @ r).tolist() == pytest.approx([0.019608, 0.039216, 0, 0], abs=1e-6)
    torch.testing.assert_close(unnormalised @ r, a / (a + r @ P @ r) * (P @ r))
    new = project(P, r, a)
    assert float(new.norm()) == pytest.approx(1.0)
    assert new[0, :2].tolist() == pytest.approx([0.464115, -0.226397], abs=1e-6)


def test_mla_first_step_is_not_projected_and_encoders_see_only_their_loss():
    """N = 2 on the reference's model (one Linear(D, C) applied to each modality), SGD lr 0.1, as
    the official loop: step 1 (modality a) moves encoder a and the shared classifier by plain SGD on
    CE(H(f_a)), nothing projected; encoder v does not move. Step 2 (modality v) moves encoder v by
    its own loss only, the classifier's weight by its gradient times P^T with P the projector
    updated by r = mean f_v (worked by hand from the RLS formula), the bias unprojected."""
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=4, n_test=4, task="classification", num_classes=3)
    cfg = ModelConfig(dim=4, seq_len=1, hidden=0, dropout=0.0, fusion="shared")
    torch.manual_seed(0)
    model = build_model(cfg, ds, 3).double()
    x = {m: v.double() for m, v in ds.train.x.items()}
    batch = ds.train.batch(torch.arange(16))
    batch.x = {m: x[m][:16] for m in x}
    a, v = model.modalities
    s = STRATEGIES["mla"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3))
    s.on_epoch_start(0, ds)
    s.steps_per_epoch = 1
    H = model.head.shared
    enc = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in (a, v)}
    W0, b0 = H.weight.detach().clone(), H.bias.detach().clone()
    # step 1 by hand: CE(H(f_a)) through encoder a and H
    fa = model.encoders[a](batch.x[a], batch.mask[a]).mean(1)
    la = torch.nn.functional.cross_entropy(fa @ W0.T + b0, batch.y.long())
    ga = torch.autograd.grad(la, [*model.encoders[a].parameters()])
    W = W0.clone().requires_grad_()
    bb = b0.clone().requires_grad_()
    gW1, gb1 = torch.autograd.grad(torch.nn.functional.cross_entropy(fa.detach() @ W.T + bb, batch.y.long()), [W, bb])
    W1, b1 = W0 - 0.1 * gW1, b0 - 0.1 * gb1
    # step 2 by hand, after step 1: encoder v unchanged so far; its loss on the updated classifier
    fv = model.encoders[v](batch.x[v], batch.mask[v]).mean(1)
    W = W1.clone().requires_grad_()
    bb = b1.clone().requires_grad_()
    lv = torch.nn.functional.cross_entropy(fv @ W.T + bb, batch.y.long())
    gv = torch.autograd.grad(lv, [*model.encoders[v].parameters()], retain_graph=True)
    gW2, gb2 = torch.autograd.grad(lv, [W, bb])
    r = fv.detach().mean(0)
    alpha = 0.1 ** (0 / 1 + 1)
    k = r  # P = I before its first update
    P = torch.eye(4, dtype=torch.float64) - torch.outer(k, k) / (alpha + r @ k)
    P = P / P.norm()
    want_W = W1 - 0.1 * gW2 @ P.T
    want_b = b1 - 0.1 * gb2
    s.train_step(batch)
    assert s.steps == 2
    torch.testing.assert_close(s.P, P)
    torch.testing.assert_close(H.weight.detach(), want_W)
    torch.testing.assert_close(H.bias.detach(), want_b)
    for p0, g, p in zip(enc[a], ga, model.encoders[a].parameters()):  # only loss_a, unprojected
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    for p0, g, p in zip(enc[v], gv, model.encoders[v].parameters()):  # only loss_v
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    assert float(model.head.beta) == 1.0  # no ensemble scale in MLA's model


def test_mla_refuses_heads_without_a_shared_classifier():
    ds = make_synthetic(n_modalities=2, n_train=8, n_val=4, n_test=4)
    for cfg in (ModelConfig(dim=4, seq_len=1, hidden=0, fusion="concat"), ModelConfig(dim=4, seq_len=1, fusion="late_mean")):
        model = build_model(cfg, ds, 1)
        with pytest.raises(ValueError, match="mla protects a classifier shared by the modalities"):
            STRATEGIES["mla"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression())
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, fusion="mlpmixer"), ds, 1)  # mixes first: shared
    STRATEGIES["mla"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression())


@pytest.mark.parametrize("n", [2, 3])
def test_mla_each_modality_projects_with_its_own_features(n):
    """Two batches, N = 2 and 3, on the reference's model (one Linear applied to every modality):
    each modality's step updates the projector with r = the batch mean of THAT modality's features
    (the official GSPlugin is called with them), every step but the very first. With lr = 0 the
    features stay put, so P after both batches is the textbook RLS fold over those r's, worked here
    independently; it differs from a fold that reads any single modality's features (the bug that
    read the last modality's for every step)."""
    ds = make_synthetic(n_modalities=n, n_train=16, n_val=4, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, dropout=0.0, fusion="shared"), ds, 3).double()
    ds.train.x = {m: v.double() for m, v in ds.train.x.items()}
    s = STRATEGIES["mla"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(3), steps_per_epoch=2)
    s.on_epoch_start(0, ds)
    chunks = [ds.train.batch(torch.arange(0, 8)), ds.train.batch(torch.arange(8, 16))]
    with torch.no_grad():
        r = [{m: f.flatten(1).mean(0) for m, f in model.encode(b).items()} for b in chunks]

    def fold(pick):
        P, first = torch.eye(4, dtype=torch.float64), True
        for i, rb in enumerate(r):
            a = 0.1 ** (i / 2 + 1)
            for m in model.modalities:
                if not first:
                    k = P @ pick(rb, m)
                    P = P - torch.outer(k, k) / (a + pick(rb, m) @ k)
                    P = P / P.norm()
                first = False
        return P

    for b in chunks:
        s.train_step(b)
    want = fold(lambda rb, m: rb[m])
    torch.testing.assert_close(s.P, want)
    assert s.actions["projected_steps"] == 2 * n - 1
    for wrong in model.modalities:  # one modality's features for every step: another projector
        assert not torch.allclose(fold(lambda rb, m, w=wrong: rb[w]), want, atol=1e-6)


@pytest.mark.parametrize("task_name", ["regression", "classification"])
def test_mla_is_scored_by_its_test_time_fusion(task_name):
    """MLA's test-time prediction (the reference's fused output): regression averages the branches'
    outputs; classification weighs each branch's softmax by its entropy weight (the oracle above)
    and the score is the log of that mixture. Each single branch stays the masked shared head."""
    from mmsent.dgl import zero_others
    from mmsent.evaluate import branch_predictions

    classes = 3 if task_name == "classification" else 1
    ds = make_synthetic(n_modalities=3, n_train=24, n_val=8, n_test=8, task=task_name, num_classes=3)
    model = build_model(ModelConfig(dim=4, seq_len=2, hidden=8, dropout=0.0), ds, classes)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["mla"](model, torch.optim.SGD(model.parameters(), lr=0.1), task)
    s.train_step(ds.train.batch(torch.arange(8)))
    preds = branch_predictions(s, ds.test, batch_size=3)
    model.eval()
    with torch.no_grad():
        feats = model.encode(ds.test.batch(torch.arange(len(ds.test))))
        branch = {m: model.head(zero_others(feats, m)) for m in feats}
        for m in feats:
            torch.testing.assert_close(preds[m], branch[m], rtol=1e-5, atol=1e-5)
        if task_name == "regression":
            want = sum(branch.values()) / 3
        else:
            w = entropy_weights(branch)
            want = sum(w[m][:, None] * branch[m].softmax(-1) for m in branch).log()
        torch.testing.assert_close(preds["multi"], want, rtol=1e-5, atol=1e-5)
