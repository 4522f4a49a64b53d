"""AGM (`mmsent/strategies/agm.py`) against the numeric oracles of shared/docs/research/baselines.md §13, its
N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import math

import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.agm import agm_coefficients
from mmsent.strategies.shapley import coalitions, shapley_contributions
from mmsent.tasks import Classification


def test_agm_two_modality_oracle():
    k = agm_coefficients({"a": 0.5, "v": 1.5}, {"a": 0.8, "v": 1.2}, alpha=1.5)
    assert k["a"] == pytest.approx(0.158867, abs=1e-6) and k["v"] == pytest.approx(1.574064, abs=1e-6)
    # official 2-modality form: ratio_a = exp(s_v - s_a), opt_a = exp(T_v - T_a)
    assert k["a"] == pytest.approx(math.exp(1.5 * (math.exp(1.2 - 0.8) - math.exp(1.5 - 0.5))))


def test_agm_three_modality_oracle():
    k = agm_coefficients({"a": 0.5, "v": 1.5, "t": 1.0}, {"a": 0.8, "v": 1.2, "t": 1.0}, alpha=1.0)
    assert [k[m] for m in "avt"] == pytest.approx([0.464339, 1.307938, 1.0], abs=1e-6)
    # official 3-modality ratio exp((mean - s_m) * 3/2) is the general exp(mean_{j!=m} s_j - s_m)
    s = {"a": 0.5, "v": 1.5, "t": 1.0}
    mean = sum(s.values()) / 3
    for m in s:
        others = sum(v for j, v in s.items() if j != m) / 2
        assert math.exp((mean - s[m]) * 1.5) == pytest.approx(math.exp(others - s[m]))


def test_agm_output_equals_full_model_and_scales_additive_gradients():
    """For a bias-free additive model the hook scaling is exactly per-encoder gradient scaling."""
    torch.manual_seed(0)
    names = ["a", "v", "t"]
    W = {m: torch.randn(3, requires_grad=True) for m in names}
    x = {m: torch.randn(5, 3) for m in names}
    feats = {m: x[m] * W[m] for m in names}
    f = {c: sum((feats[m] if m in c else torch.zeros_like(feats[m])).sum(-1) for m in names) for c in coalitions(names)}
    contrib = shapley_contributions(f, names)
    torch.testing.assert_close(sum(contrib.values()), f[frozenset(names)])
    coeff = {"a": 0.3, "v": 1.7, "t": 1.0}
    from mmsent.strategies.agm import _scale_grad

    out = sum(_scale_grad(contrib[m], coeff[m]) for m in names)
    got = torch.autograd.grad(out.pow(2).mean(), [W[m] for m in names], retain_graph=True)
    plain = torch.autograd.grad(f[frozenset(names)].pow(2).mean(), [W[m] for m in names])
    for m, g, p in zip(names, got, plain):
        torch.testing.assert_close(g, coeff[m] * p)


def test_agm_cap_is_the_references_for_the_number_of_modalities():
    """10 for two modalities (run/CREMAD_main.py), 7 for three (run/URFunny_main.py), unless set."""
    for n, cap in ((2, 10.0), (3, 7.0), (4, 7.0)):
        ds = make_synthetic(n_modalities=n, n_train=8, n_val=4, n_test=4, task="classification", num_classes=3)
        model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, fusion="concat"), ds, 3)
        assert STRATEGIES["agm"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3)).cap == cap
        assert STRATEGIES["agm"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3), cap=3.0).cap == 3.0
    # the cap binds: opt - ratio = 9 is cut to 7 at N = 3
    k = agm_coefficients({"a": 0.0, "v": 0.0, "t": 0.0}, {"a": -10.0, "v": 0.0, "t": 0.0}, alpha=1.0, cap=7.0)
    assert k["a"] == pytest.approx(math.exp(7.0))


def _clip_case(encoder_scale: float, head_scale: float, **settings):
    """The gradients the optimizer sees after one AGM step, and the largest head-weight entry."""
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=4, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, dropout=0.0, fusion="concat"), ds, 3)
    with torch.no_grad():
        for e in model.encoders.values():
            for p in e.parameters():
                p.mul_(encoder_scale)
        model.head.net.weight.mul_(head_scale)
    captured = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.step = lambda: captured.update(g=[p.grad.clone() for p in model.parameters() if p.grad is not None],
                                       head=float(model.head.net.weight.grad.abs().max()))
    s = STRATEGIES["agm"](model, opt, Classification(3), **settings)
    s.train_step(ds.train.batch(torch.arange(16)))
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in captured["g"]])))
    return norm, captured["head"], s


def test_agm_conditional_clip_bounds_the_step_when_a_head_gradient_exceeds_one():
    """The reference: when any entry of the head's last weight gradient exceeds 1 in magnitude, all
    gradients are clipped to total norm 1; otherwise they are left alone -- also when their total
    norm is above 1, which tells the conditional clip from an unconditional one."""
    raw, head, _ = _clip_case(30.0, 1.0, conditional_clip=False)
    assert head > 1 and raw > 1
    norm, _, s = _clip_case(30.0, 1.0)
    assert norm == pytest.approx(1.0, rel=1e-5) and s.actions["clipped_steps"] == 1
    # tiny features (small head-weight gradients), a large head (large encoder gradients)
    raw, head, _ = _clip_case(0.05, 200.0, conditional_clip=False)
    assert head <= 1 and raw > 1
    norm, _, s = _clip_case(0.05, 200.0)
    assert norm == pytest.approx(raw, rel=1e-6) and norm > 1 and s.actions["clipped_steps"] == 0
