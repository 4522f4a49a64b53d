"""MMPareto (`mmsent/strategies/mmpareto.py`) against the numeric oracles of shared/docs/research/baselines.md
§13, its N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.mmpareto import MMPareto, pareto_combine, pareto_weights
from mmsent.tasks import Classification, Regression


def test_mmpareto_conflict_oracle():
    g_mm, g_m = [torch.tensor([1.0, 0.0])], [torch.tensor([-0.5, 1.0])]
    c = pareto_weights(g_mm, g_m)
    assert c == pytest.approx(0.538462, abs=1e-6)
    d = 2 * (c * g_mm[0] + (1 - c) * g_m[0])
    assert d.tolist() == pytest.approx([0.615385, 0.923077], abs=1e-6)
    assert float(d @ g_mm[0]) == pytest.approx(float(d @ g_m[0]), abs=1e-6)  # equal inner products
    assert pareto_combine(g_mm, g_m)[0].tolist() == pytest.approx([0.930261, 1.395391], abs=1e-6)


def test_mmpareto_no_conflict_oracle():
    out = pareto_combine([torch.tensor([1.0, 0.0])], [torch.tensor([0.5, 1.0])])
    assert out[0].tolist() == pytest.approx([2.25, 1.5])


def test_mmpareto_shared_head_variant_uses_separate_per_loss_gradients():
    """MMPareto-SH (unimodal_heads: false): L_m through the shared head, the head gets the plain
    gradient of L_mm + sum_m L_m, every encoder the Pareto combination of its two gradients."""
    ds = make_synthetic(n_modalities=3, n_train=16, n_val=4, n_test=4)
    model = build_model(ModelConfig(dim=8, seq_len=2, hidden=16, dropout=0.0, fusion="concat"), ds, 1)
    batch = ds.train.batch(torch.arange(16))
    task = Regression()
    feats = model.encode(batch)
    l_mm = task.loss(model.head(feats), batch.y)
    l_m = {m: task.loss(model.head({k: (f if k == m else torch.zeros_like(f)) for k, f in feats.items()}), batch.y)
           for m in feats}
    want = {}
    for m in feats:
        ps = list(model.encoders[m].parameters())
        a = torch.autograd.grad(l_mm, ps, retain_graph=True)
        b = torch.autograd.grad(l_m[m], ps, retain_graph=True)
        want.update(zip(ps, pareto_combine(list(a), list(b))))
    hp = list(model.head.parameters())
    want.update(zip(hp, torch.autograd.grad(l_mm + sum(l_m.values()), hp)))
    captured = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.step = lambda: captured.update({p: p.grad.clone() for p in model.parameters()})
    MMPareto(model, opt, task, unimodal_heads=False).train_step(batch)
    for p, g in want.items():
        torch.testing.assert_close(captured[p], g)


def test_mmpareto_separate_unimodal_heads_are_the_official_form():
    """unimodal_heads: L_m = CE(Linear_m(f_m)) on the strategy's own classifiers; they learn from L_m
    only, the fusion head from L_mm only, and encoder m gets the Pareto combination of the
    gradients of L_mm and of that L_m; the heads resume with the strategy."""
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=4, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0), ds, 3).double()
    ds.train.x = {m: v.double() for m, v in ds.train.x.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    s = STRATEGIES["mmpareto"](model, opt, Classification(3), unimodal_heads=True)
    assert len(opt.param_groups) == 2
    batch = ds.train.batch(torch.arange(16))
    y = batch.y.long()
    f = model.encode(batch)
    l_mm = torch.nn.functional.cross_entropy(model.head(f), y)
    l_m = {m: torch.nn.functional.cross_entropy(s.heads[m](f[m].flatten(1)), y) for m in f}
    want_head = torch.autograd.grad(l_mm, list(model.head.parameters()), retain_graph=True)
    want_uni = {m: torch.autograd.grad(l_m[m], list(s.heads[m].parameters()), retain_graph=True) for m in f}
    want_enc = {}
    for m in f:
        params = list(model.encoders[m].parameters())
        want_enc[m] = pareto_combine(list(torch.autograd.grad(l_mm, params, retain_graph=True)),
                                     list(torch.autograd.grad(l_m[m], params, retain_graph=True)))
    captured = {}
    opt.step = lambda: captured.update({p: p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None})
    s.train_step(batch)
    for p, g in zip(model.head.parameters(), want_head):
        torch.testing.assert_close(captured[p], g)
    for m in f:
        for p, g in zip(s.heads[m].parameters(), want_uni[m]):
            torch.testing.assert_close(captured[p], g)
        for p, g in zip(model.encoders[m].parameters(), want_enc[m]):
            torch.testing.assert_close(captured[p], g)
    other = STRATEGIES["mmpareto"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(3), unimodal_heads=True)
    other.load_state_dict(s.state_dict())
    for m in f:
        torch.testing.assert_close(other.heads[m].weight, s.heads[m].weight)
