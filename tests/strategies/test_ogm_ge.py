"""OGM-GE (`mmsent/strategies/ogm_ge.py`) against the numeric oracles of shared/docs/research/baselines.md §13,
its N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import math

import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.ogm_ge import ogm_coefficients, ogm_ratios
from mmsent.tasks import Classification, Regression


def test_ogm_two_modality_oracle():
    task = Classification(3)
    y = torch.tensor([0, 1])
    s_a = float(task.score(torch.tensor([[2.0, 0, 0], [0, 1, 0]]), y).sum())
    s_v = float(task.score(torch.zeros(2, 3), y).sum())
    assert (s_a, s_v) == pytest.approx((1.363103, 0.666667), abs=1e-6)
    r = ogm_ratios({"audio": s_a, "visual": s_v})
    assert r["audio"] == pytest.approx(2.044654, abs=1e-6) and r["visual"] == pytest.approx(0.489080, abs=1e-6)
    for alpha, want in [(0.1, 0.798337), (0.3, 0.453487), (0.8, 0.073128)]:
        k = ogm_coefficients({"audio": s_a, "visual": s_v}, alpha)
        assert k["audio"] == pytest.approx(want, abs=1e-6) and k["visual"] == 1.0
        # official 2-modality code path: only the dominant one, 1 - tanh(alpha * ratio)
        assert k["audio"] == pytest.approx(1 - math.tanh(alpha * s_a / s_v))


def test_ogm_three_modality_ratios_and_jump_at_one():
    r = ogm_ratios({"a": 1.2, "v": 0.4, "t": 0.8})  # option (a), mean pairwise
    assert [r[m] for m in "avt"] == pytest.approx([2.25, 0.416667, 1.333333], abs=1e-6)
    k = ogm_coefficients({"a": 1.2, "v": 0.4, "t": 0.8}, 0.3)
    assert k["v"] == 1.0 and k["a"] < 1 and k["t"] < 1  # every dominant modality is damped
    just_above = ogm_coefficients({"a": 1.0 + 1e-9, "v": 1.0}, 0.3)["a"]
    assert just_above == pytest.approx(0.708687, abs=1e-6)


def test_ogm_ge_step_modulates_encoder_gradients_only():
    ds = make_synthetic(n_modalities=3, n_train=32, n_val=4, n_test=4)
    model = build_model(ModelConfig(dim=8, seq_len=2, hidden=16, dropout=0.0), ds, 1)
    batch = ds.train.batch(torch.arange(32))
    task = Regression()
    feats = model.encode(batch)
    plain = torch.autograd.grad(task.loss(model.head(feats), batch.y), list(model.parameters()))
    with torch.no_grad():
        scores = {m: float(task.score(model.head({k: (f if k == m else torch.zeros_like(f)) for k, f in feats.items()}),
                                      batch.y).sum()) for m in feats}
    k = ogm_coefficients(scores, 0.5)
    captured = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.step = lambda: captured.update({p: p.grad.clone() for p in model.parameters() if p.grad is not None})
    strat = STRATEGIES["ogm_ge"](model, opt, task, alpha=0.5, noise=False)
    strat.train_step(batch)
    enc_of = {p: m for m, e in model.encoders.items() for p in e.parameters()}
    for p, g in zip(model.parameters(), plain):
        m = enc_of.get(p)
        want = g * k[m] if (m is not None and p.dim() > 1) else g
        torch.testing.assert_close(captured[p], want)


def test_ogm_scores_use_the_references_bias_share_on_a_linear_head():
    """Linear concat head, N = 2: the reference scores z_m = W_m f_m + b/2; the masked option uses
    the full bias. The coefficient follows from the hand-made scores."""
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=4, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, dropout=0.0, fusion="concat"), ds, 3)
    with torch.no_grad():
        model.head.net.bias.copy_(torch.tensor([2.0, -1.0, 0.5]))
    batch = ds.train.batch(torch.arange(16))
    fc, task = model.head.net, Classification(3)
    with torch.no_grad():
        f = model.encode(batch)
        blocks = dict(zip(model.modalities, fc.weight.chunk(2, 1)))
        score = lambda b: {m: float(task.score(f[m].mean(1) @ blocks[m].T + b, batch.y).sum()) for m in f}  # noqa: E731
        want = {"bias_share": ogm_coefficients(score(fc.bias / 2), 0.8), "masked": ogm_coefficients(score(fc.bias), 0.8)}
    assert want["bias_share"] != want["masked"]
    for mode, k in want.items():
        s = STRATEGIES["ogm_ge"](model, torch.optim.SGD(model.parameters(), lr=0.0), task, alpha=0.8, noise=False, score=mode)
        logs = s.train_step(batch)
        assert {m: logs[f"coeff_{m}"] for m in f} == pytest.approx(k), mode


def test_ogm_ge_noise_has_zero_mean_and_the_unmodulated_gradients_std():
    """GE: the gradient the optimizer sees is k g + e with e ~ N(0, std(g)^2) per modulated tensor
    (std of the UN-modulated gradient, the reference's order): over a 256 x 256 weight (65536 draws)
    the residual's mean is ~0 and its std equals std(g) to within 2 %."""
    ds = make_synthetic(n_modalities=2, n_train=32, n_val=4, n_test=4)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=256, encoder_hidden=256, seq_len=1, hidden=16, dropout=0.0, fusion="concat"), ds, 1)
    batch = ds.train.batch(torch.arange(32))
    task = Regression()
    plain = dict(zip(model.parameters(), torch.autograd.grad(task.loss(model.head(model.encode(batch)), batch.y),
                                                             list(model.parameters()))))
    captured = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.step = lambda: captured.update({p: p.grad.clone() for p in model.parameters() if p.grad is not None})
    s = STRATEGIES["ogm_ge"](model, opt, task, alpha=0.5)
    logs = s.train_step(batch)
    checked = 0
    for m, enc in model.encoders.items():
        k = logs[f"coeff_{m}"]
        for p in enc.parameters():
            if p.dim() < 2 or p.numel() < 60000:
                continue
            g = plain[p]
            e = captured[p] - k * g
            assert abs(float(e.mean())) < 5 * float(g.std()) / p.numel() ** 0.5
            assert float(e.std()) == pytest.approx(float(g.std()), rel=0.02)
            checked += 1
    assert checked >= 2  # a big weight in each encoder
    head = [p for p in model.head.parameters()]
    for p in head:  # the head is never modulated nor noised
        torch.testing.assert_close(captured[p], plain[p])
