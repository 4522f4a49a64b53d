"""The baselines against the numeric oracles of shared/docs/research/baselines.md §13, their
N-modality formulas against the official two-modality forms, and their gradient mechanics."""
import itertools
import math

import numpy as np
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.agm import agm_coefficients
from mmsent.strategies.shapley import coalitions, shapley_contributions
from mmsent.strategies.dnr import DnR, diagnose_after, purity_score, relearn_strength
from mmsent.strategies.gblending import blend_weights
from mmsent.strategies.mla import entropy_weights, project
from mmsent.strategies.mmpareto import MMPareto, pareto_combine, pareto_weights
from mmsent.strategies.ogm_ge import ogm_coefficients, ogm_ratios
from mmsent.strategies.pmr import pmr_betas, prototype_logits
from mmsent.tasks import Classification, Regression

# ---------------- OGM-GE ----------------


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


# ---------------- AGM ----------------


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


# ---------------- PMR ----------------


@pytest.mark.parametrize("rho,beta,gamma", [(0.4, 1, 0), (0.8, 0.25, 0), (1.0, 0, 0), (1.5, 0, 0.5), (2.5, 0, 1)])
def test_pmr_beta_gamma_oracle(rho, beta, gamma):
    b = pmr_betas({"m0": rho, "m1": 1.0})  # rho = s_0 / s_1
    assert b["m0"] == pytest.approx(beta) and b["m1"] == pytest.approx(gamma)


def test_pmr_n_modality_and_prototype_classifier():
    b = pmr_betas({"a": 2.0, "v": 0.5, "t": 1.6})
    assert b == pytest.approx({"a": 0.0, "v": 1.0, "t": 0.25})
    protos = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    logits = prototype_logits(protos.clone(), protos)
    assert logits.argmax(-1).tolist() == [0, 1] and logits[0, 1] == pytest.approx(-5.0)


def test_pmr_prototype_ema():
    ds = make_synthetic(n_modalities=2, n_train=40, n_val=4, n_test=4, task="classification", num_classes=2)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0), ds, 2)
    s = STRATEGIES["pmr"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(2), subset=1.0)
    s.on_epoch_start(0, ds)
    first = {m: p.clone() for m, p in s.protos.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    new = s.compute_prototypes(ds.train)
    s.protos = {}
    raw = s.compute_prototypes(ds.train)
    for m in first:
        torch.testing.assert_close(new[m], 0.8 * raw[m] + 0.2 * first[m])


# ---------------- MMPareto ----------------


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


def test_mmpareto_step_uses_separate_per_loss_gradients():
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
    MMPareto(model, opt, task).train_step(batch)
    for p, g in want.items():
        torch.testing.assert_close(captured[p], g)


# ---------------- MLA ----------------


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


# ---------------- D&R ----------------


@pytest.mark.parametrize("gap,w", [(0.05, 0.148885), (0.1, 0.291313), (0.2, 0.537050), (0.4, 0.833655)])
def test_dnr_strength_oracle(gap, w):
    assert relearn_strength(gap, 3.0) == pytest.approx(w, abs=1e-6)
    assert relearn_strength(-gap, 3.0) == pytest.approx(w, abs=1e-6)


def test_dnr_purity_and_schedule():
    assert purity_score([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert purity_score([0, 1, 0, 1], [0, 0, 0, 0]) == 0.5
    done, fired = 0, []
    for e in range(100):
        if diagnose_after(e, 20, done, 3):
            fired.append(e)
            done += 1
    assert fired == [20, 40, 60]


def test_dnr_relearn_is_convex_and_leaves_buffers():
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=8, n_test=4)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0, encoder="lstm"), ds, 1)
    s = DnR(model, torch.optim.SGD(model.parameters(), lr=0.1), Regression())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    now = {m: [p.clone() for p in e.parameters()] for m, e in model.encoders.items()}
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k not in dict(model.named_parameters())}
    s.relearn({"m0": 0.25, "m1": 0.0})
    for p, p0, p1 in zip(model.encoders["m0"].parameters(), s.init["m0"], now["m0"]):
        torch.testing.assert_close(p, 0.25 * p0 + 0.75 * p1)
    for p, p1 in zip(model.encoders["m1"].parameters(), now["m1"]):
        torch.testing.assert_close(p, p1)
    for k, v in buffers.items():
        torch.testing.assert_close(model.state_dict()[k], v)


# ---------------- G-Blending ----------------


def test_gblending_weights_oracle():
    prev = {"a": (1.6, 1.7), "v": (1.7, 1.75), "t": (1.5, 1.6), "mm": (1.5, 1.6)}
    now = {"a": (0.9, 1.3), "v": (1.2, 1.5), "t": (0.6, 1.2), "mm": (0.3, 1.1)}
    w = blend_weights(prev, now)
    assert [w[k] for k in ("a", "v", "t", "mm")] == pytest.approx([0.401672, 0.361505, 0.144602, 0.092221], abs=1e-6)
    two = blend_weights({k: prev[k] for k in ("a", "v", "mm")}, {k: now[k] for k in ("a", "v", "mm")})
    raw = {"a": 0.4 / 0.3**2, "v": 0.25 / 0.25**2, "mm": 0.5 / 0.7**2}  # the 2-modality form
    assert two == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    # a branch whose validation loss rose gets no weight (BalanceBenchmark's abs() would reward it)
    worse = blend_weights({"a": (1.0, 1.0), "mm": (1.0, 1.0)}, {"a": (0.5, 1.2), "mm": (0.5, 0.9)})
    assert worse["a"] == 0.0 and worse["mm"] == 1.0


# ---------------- every strategy, any N, both tasks ----------------

EXTRA = {"unimodal": {"modality": "m1"}}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("n,task_name", [(2, "classification"), (4, "regression")])
def test_real_step_any_n_both_tasks(name, n, task_name):
    ds = make_synthetic(n_modalities=n, n_train=24, n_val=8, n_test=4, task=task_name, num_classes=3)
    task = Regression() if task_name == "regression" else Classification(3)
    model = build_model(ModelConfig(**{"dim": 6, "seq_len": 2, "hidden": 8, "dropout": 0.0, **STRATEGIES[name].needs_model}),
                        ds, task.out_dim)
    s = STRATEGIES[name](model, torch.optim.Adam(model.parameters(), lr=1e-2), task, **EXTRA.get(name, {}))
    before = [p.clone() for p in model.parameters()]
    for epoch in range(2):
        s.on_epoch_start(epoch, ds)
        logs = s.train_step(ds.train.batch(torch.arange(24)))
    assert all(math.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    pred = s.predict(ds.test.batch(torch.arange(4)))
    assert pred.shape == (4, task.out_dim) and torch.isfinite(pred).all()


def test_coalitions_count():
    assert len(coalitions(["a", "b", "c"])) == 8
    assert set(itertools.chain.from_iterable(coalitions(["a", "b"]))) == {"a", "b"}


# ---------------- issue #28: the paper baselines' missing pieces ----------------


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


def test_agm_conditional_clip_bounds_the_step_when_a_head_gradient_exceeds_one():
    """The reference: when any entry of the head's last weight gradient exceeds 1 in magnitude, all
    gradients are clipped to total norm 1; otherwise they are left alone."""
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=4, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    for scale, clipped in [(1000.0, True), (1e-3, False)]:
        model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, dropout=0.0, fusion="concat"), ds, 3)
        with torch.no_grad():  # large inputs to the classifier: large weight gradients (or tiny ones)
            for e in model.encoders.values():
                for p in e.parameters():
                    p.mul_(scale ** 0.5)
        captured = {}
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        opt.step = lambda: captured.update(g=[p.grad.clone() for p in model.parameters() if p.grad is not None])
        s = STRATEGIES["agm"](model, opt, Classification(3))
        s.train_step(ds.train.batch(torch.arange(16)))
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in captured["g"]])))
        off = STRATEGIES["agm"](model, opt, Classification(3), conditional_clip=False)
        off.running, off.iteration = {m: 0.0 for m in model.modalities}, 0
        off.train_step(ds.train.batch(torch.arange(16)))
        raw = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in captured["g"]])))
        if clipped:
            assert raw > 1 and norm == pytest.approx(1.0, rel=1e-5)
        else:
            assert norm == pytest.approx(raw, rel=1e-6) and norm < 1


def test_pmr_window_binary_coefficients_and_fresh_subsets():
    """Prototype losses only in epochs 0..modulation_end; the released code's binary form gives 1 to
    every modality below the dominant one; every epoch draws a new random subset."""
    assert pmr_betas({"a": 2.0, "v": 0.5, "t": 1.6}, binary=True) == {"a": 0.0, "v": 1.0, "t": 1.0}
    assert pmr_betas({"a": 1.0, "v": 1.0}, binary=True) == {"a": 0.0, "v": 0.0}
    ds = make_synthetic(n_modalities=2, n_train=40, n_val=4, n_test=4, task="classification", num_classes=2)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0), ds, 2)
    s = STRATEGIES["pmr"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(2), subset=0.25,
                          modulation_end=1, per_epochs=0)
    seen = []
    real = s.compute_prototypes
    s.compute_prototypes = lambda split, rows=None: seen.append(rows.tolist()) or real(split, rows)
    batch = ds.train.batch(torch.arange(16))
    for epoch in range(3):
        s.on_epoch_start(epoch, ds)
        logs = s.train_step(batch)
        betas = [v for k, v in logs.items() if k.startswith("beta_")]
        assert (max(betas) > 0) == (epoch <= 1), (epoch, logs)
    assert all(len(r) == 10 for r in seen) and len({tuple(r) for r in seen}) == 3


def test_pmr_per_maximises_the_dominant_prototype_entropy():
    """PER (Eq. 13): during the first per_epochs epochs the loss subtracts mu * max(beta) * H(p_dom),
    p_dom the dominant modality's prototype distribution: the step's gradient equals autograd of
    CE + alpha sum beta_m PCE_m - mu max(beta) H(p_dom), worked here from the prototypes."""
    ds = make_synthetic(n_modalities=2, n_train=40, n_val=4, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0), ds, 3).double()
    ds.train.x = {m: v.double() for m, v in ds.train.x.items()}
    s = STRATEGIES["pmr"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(3), mu=0.5, per_epochs=1)
    s.on_epoch_start(0, ds)
    batch = ds.train.batch(torch.arange(24))
    y = batch.y.long()
    f = model.encode(batch)
    logits = {m: -torch.cdist(f[m].flatten(1), s.protos[m]) for m in f}
    with torch.no_grad():
        score = {m: float(l.softmax(-1).gather(1, y[:, None]).sum()) for m, l in logits.items()}
    dom = max(score, key=score.get)
    beta = {m: 0.0 if m == dom else min(max(score[dom] / v - 1, 0), 1) for m, v in score.items()}
    assert max(beta.values()) > 0
    p = logits[dom].softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    ref = (torch.nn.functional.cross_entropy(model.head(f), y)
           + sum(b * torch.nn.functional.cross_entropy(logits[m], y) for m, b in beta.items() if b > 0)
           - 0.5 * max(beta.values()) * entropy)
    model.zero_grad()
    ref.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    s.train_step(batch)
    for k, p in model.named_parameters():
        if k in want:
            torch.testing.assert_close(p.grad, want[k], rtol=1e-9, atol=1e-12)


def test_gblending_estimates_weights_on_temporary_copies():
    """GB-Estimate: from the checkpoint, one copy per branch trained super_epoch epochs on that
    branch's loss alone; the weights are blend_weights(before, after) of each branch's own losses
    (re-computed here with the same seeds), and the model being trained is left untouched. Online
    re-estimates every super-epoch; offline only at epoch 0."""
    import copy

    from mmsent.strategies.unimodal import Unimodal
    from mmsent.strategies.vanilla import Vanilla

    ds = make_synthetic(n_modalities=2, n_train=32, n_val=16, n_test=4, task="classification", num_classes=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0), ds, 3)
    task = Classification(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    s = STRATEGIES["gblending"](model, opt, task, super_epoch=2)
    s.batch_size = 8
    state = copy.deepcopy(model.state_dict())

    def losses(strategy, split):
        preds = strategy.branch_predictions(split)
        return {k: float(task.loss(v, split.y)) for k, v in preds.items()}

    torch.manual_seed(7)
    before = {k: (losses(s, ds.train)[k], losses(s, ds.val)[k]) for k in ("multi", *model.modalities)}
    after = {}
    for k in ("multi", *model.modalities):
        m = copy.deepcopy(model)
        o = torch.optim.SGD(m.parameters(), lr=0.2)
        t = Vanilla(m, o, task) if k == "multi" else Unimodal(m, o, task, modality=k)
        gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, ())))
        for _ in range(2):
            m.train()
            for b in ds.train.batches(8, shuffle=True, generator=gen):
                t.train_step(b)
        after[k] = (losses(t, ds.train)[k], losses(t, ds.val)[k])
    want = blend_weights(before, after)
    torch.manual_seed(7)
    s.on_epoch_start(0, ds)
    assert s.weights == pytest.approx(want) and max(want.values()) < 0.99
    for k, v in model.state_dict().items():  # the copies trained, not the model
        assert torch.equal(v, state[k]), k
    calls = []
    s.gb_estimate = lambda data: calls.append(s.epoch)
    for epoch in range(1, 5):
        s.on_epoch_start(epoch, ds)
    assert calls == [2, 4]
    off = STRATEGIES["gblending"](model, opt, task, super_epoch=2, estimate="offline")
    off.gb_estimate = lambda data: calls.append(("offline", off.epoch))
    for epoch in range(5):
        off.on_epoch_start(epoch, ds)
    assert calls[2:] == [("offline", 0)]


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
