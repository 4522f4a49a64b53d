"""OPM, sample-level valuation, Greedy, AMCo, LFM, ReconBoost and MBSD against oracles worked by
hand from their REFERENCES' semantics (shared docs/research/balancemm-methods.md, which reads the
official code or BalanceBenchmark's), at N = 2 first, then the N > 2 extension reducing to it, and
each step on a real model against a loss written here independently of mmsent's code. (A real step
at N = 2 and 4 for both tasks, resume == uninterrupted, the branch predictions and 2-rank exactness
of every registered strategy are in test_baselines / test_strategies / test_distributed.)"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.dgl import keep_only
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.amco import dependence_shares, mask_size
from mmsent.strategies.greedy import caring, relative_speed
from mmsent.strategies.lfm import alpha_cls, js_divergence
from mmsent.strategies.mbsd import distillation, pair_terms
from mmsent.strategies.opm import drop_probabilities, rescale
from mmsent.strategies.reconboost import learner_weights
from mmsent.strategies.valuation import copy_counts, sample_shapley
from mmsent.tasks import Classification, Regression


def _model(n=2, task_name="classification", classes=3, **model):
    ds = make_synthetic(n_modalities=n, n_train=24, n_val=8, n_test=8, task=task_name, num_classes=classes)
    out = classes if task_name == "classification" else 1
    cfg = {"dim": 4, "seq_len": 2, "hidden": 8, "dropout": 0.0, **model}
    built = build_model(ModelConfig(**cfg), ds, out)  # float32 shape-recording pass, then float64:
    for split in (ds.train, ds.val, ds.test):  # gradient comparisons free of float32 cancellation
        split.x = {m: v.double() for m, v in split.x.items()}
        split.y = split.y.double() if split.y.is_floating_point() else split.y
    return ds, built.double()


def _grads(model):
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def _assert_grads(model, want):
    got = _grads(model)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


def _step_matches(model, strategy, batch, ref):
    """The strategy's step leaves the gradients ``ref.backward()`` gives; returns its logs."""
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    logs = strategy.train_step(batch)
    _assert_grads(model, want)
    return logs



def _opt(model, lr=0.0):
    return torch.optim.SGD(model.parameters(), lr=lr)


# ---------------- OPM (BML_TPAMI2024 Classifier.py / train_opm.sh) ----------------

def test_opm_drop_probability_oracle():
    """s = (3, 1.5): rho_a = 2 -> q_a = min(1, 0.5 (1 + 0.5 tanh(1))) = 0.690399, q_v = 0. Any lead
    drops with at least q_base: rho = 1.01 -> 0.502500. A large lambda is capped at 1."""
    q = drop_probabilities({"a": 3.0, "v": 1.5}, 0.5, 0.5)
    assert q == pytest.approx({"a": 0.690399, "v": 0.0}, abs=1e-6)
    assert drop_probabilities({"a": 1.01, "v": 1.0}, 0.5, 0.5)["a"] == pytest.approx(0.502500, abs=1e-6)
    assert drop_probabilities({"a": 3.0, "v": 1.0}, 0.5, 5.0)["a"] == 1.0
    # N = 3 (extension): rho_m = mean_j s_m / s_j; s = (2, 1, 1): rho_t = 2, the others 3/4
    q3 = drop_probabilities({"t": 2.0, "a": 1.0, "v": 1.0}, 0.5, 0.5)
    assert q3 == pytest.approx({"t": 0.690399, "a": 0.0, "v": 0.0}, abs=1e-6)
    # at N = 2 the extension's ratio is the source's s_a / s_v
    for sa, sv in [(3.0, 1.5), (0.7, 2.0), (5.0, 4.9)]:
        two = drop_probabilities({"a": sa, "v": sv}, 0.5, 0.5)["a"]
        want = min(1, 0.5 * (1 + 0.5 * math.tanh(sa / sv - 1))) if sa / sv > 1 else 0.0
        assert two == pytest.approx(want)


def test_opm_rescale_oracle():
    """theta = sum d_m q_m / sum d_m = (4 * 0.690399 + 12 * 0) / 16 = 0.172600 -> 1 / (1 - theta) = 1.208605."""
    assert rescale({"a": 0.690399, "v": 0.0}, {"a": 4, "v": 12}) == pytest.approx(1.208605, abs=1e-6)


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_opm_step_drops_per_sample_and_rescales_every_modality(task_name):
    """One modulated step (gate open) against a loss written from the reference: keep_{i,m} =
    [u_{i,m} >= q_m], every feature times keep / (1 - theta), the task loss on the result."""
    ds, model = _model(n=2, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["opm"](model, _opt(model), task, warmup=-1, p_exe=1.0, q_base=0.5, lam=0.5)
    s.on_epoch_start(0, ds)
    batch = ds.train.batch(torch.arange(16))
    with torch.no_grad():
        feats = model.encode(batch)
        score = {m: float(task.score(model.head(keep_only(feats, [m])), batch.y).sum()) for m in feats}
    a, v = sorted(score, key=score.get, reverse=True)
    q = {a: min(1.0, 0.5 * (1 + 0.5 * math.tanh(score[a] / score[v] - 1))), v: 0.0}
    theta = sum(q[m] * feats[m][0].numel() for m in q) / sum(feats[m][0].numel() for m in q)
    torch.manual_seed(11)
    gate = float(torch.rand(()))
    u = {m: torch.rand(16) for m in model.modalities}
    assert gate < 1.0 and 0 < (u[a] < q[a]).sum() < 16  # the case drops some samples of the leader
    feats = model.encode(batch)
    scaled = {m: f * (u[m] >= q[m]).double().view(-1, 1, 1) / (1 - theta) for m, f in feats.items()}
    ref = task.loss(model.head(scaled), batch.y)
    torch.manual_seed(11)
    logs = _step_matches(model, s, batch, ref)
    assert logs["scale"] == pytest.approx(1 / (1 - theta))


def test_opm_gate_and_warmup():
    """Epochs 0..5 never modulate (the reference's t > 5); after that about p_exe = 0.7 of the steps do."""
    ds, model = _model(n=2)
    s = STRATEGIES["opm"](model, _opt(model), Classification(3))
    batch = ds.train.batch(torch.arange(8))
    for epoch in range(6):
        s.on_epoch_start(epoch, ds)
        assert not any(k.startswith("drop_p") for k in s.train_step(batch))
    s.on_epoch_start(6, ds)
    torch.manual_seed(0)
    ran = sum("scale" in s.train_step(batch) for _ in range(400))
    assert 0.63 < ran / 400 < 0.77, ran


def test_opm_discards_samples_with_every_modality_dropped(monkeypatch):
    """N = 3 (extension; cannot happen at N = 2): with q = 0.5 for every modality (theta = 0.5, scale
    2) and draws that drop all three modalities of samples 0-2, those samples leave the loss, which
    is the mean over the survivors 3-5."""
    import mmsent.strategies.opm as opm_mod

    ds, model = _model(n=3)
    s = STRATEGIES["opm"](model, _opt(model), Classification(3), warmup=-1, p_exe=1.0)
    batch = ds.train.batch(torch.arange(6))
    monkeypatch.setattr(opm_mod, "drop_probabilities", lambda scores, qb, lam: dict.fromkeys(scores, 0.5))
    s.dist.rand = lambda n: torch.tensor([0.0, 0.0, 0.0, 0.9, 0.9, 0.9])
    feats = model.encode(batch)
    keep = torch.tensor([0.0, 0, 0, 1, 1, 1], dtype=torch.float64).view(-1, 1, 1)
    per = F.cross_entropy(model.head({m: f * keep / 0.5 for m, f in feats.items()}), batch.y.long(), reduction="none")
    torch.manual_seed(0)
    _step_matches(model, s, batch, per[3:].mean())


# ---------------- Sample-level valuation (Valuate-and-Enhance sample_level.py) ----------------

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


# ---------------- Greedy (greedy_multimodal_learning balanced_mmtm.py / callbacks.py) ----------------

def test_greedy_relative_speed_and_bdr_switch_oracle():
    """||g||^2 / ||theta||^2 over a group: theta = (3, 4), g = (0.3, 0.4) -> 0.25 / 25 = 0.01; a
    column block counts only its own entries. The curation switch: d = BDR_a - BDR_v = 0.5 > eps
    -> care for a (c = 0); d = -0.5 -> v; |d| <= eps -> regular steps."""
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([0.3, 0.4])
    assert relative_speed([(p, None)]) == pytest.approx(0.01)
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
    w.grad = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert relative_speed([(w, (slice(None), slice(0, 1)))]) == pytest.approx(2 / 5)
    assert caring({"a": -1.0, "v": -1.5}, 0.01) == "a"
    assert caring({"a": -1.5, "v": -1.0}, 0.01) == "v"
    assert caring({"a": -1.0, "v": -1.005}, 0.01) is None
    # N = 3 (extension): the largest BDR when max - min > eps; reduces to the sign rule at N = 2
    assert caring({"t": 0.2, "a": -1.0, "v": 0.5}, 0.01) == "v"


def test_mmtm_frozen_gate_is_its_running_mean():
    """gate_mean <- (g + k mean) / (k + 1); a frozen stream is scaled by that mean for every sample,
    the other stream by its live gate."""
    from mmsent.models.resnet import MMTM

    torch.manual_seed(0)
    block = MMTM({"a": 3, "v": 2}, ratio=2)
    x1 = {"a": torch.randn(4, 3, 5), "v": torch.randn(4, 2, 5)}
    block(x1)
    g1 = {m: g.clone() for m, g in block.last_gates.items()}
    block.update_gate_means(g1)
    block(x1 | {"a": 2 * x1["a"]})
    g2 = {m: g.clone() for m, g in block.last_gates.items()}
    block.update_gate_means(g2)
    torch.testing.assert_close(block.gate_mean_a, (g1["a"] + g2["a"]) / 2)
    block.frozen = frozenset(["a"])
    out = block(x1)
    torch.testing.assert_close(out["a"], x1["a"] * block.gate_mean_a.view(1, 3, 1))
    live = torch.sigmoid(block.gates["v"](block.joint(torch.cat([x1["a"].mean(-1), x1["v"].mean(-1)], -1))))
    torch.testing.assert_close(out["v"], x1["v"] * live[:, :, None])


def test_greedy_curates_the_caring_modality_with_its_running_mean_gate():
    """On an MMTM model: epoch < E_0 never curates; a regular step accumulates both speeds and
    updates the running gates; with eps = 0 the next Q steps curate the larger-BDR modality: its
    gates' parameters get no gradient (the running mean replaced them) while every main group
    still learns, and speeds are not accumulated during curation."""
    ds, model = _model(n=2, fusion="mmtm_seq")
    s = STRATEGIES["greedy"](model, _opt(model, 0.05), Classification(3), eps=0.0, curation_steps=2, start_epoch=1)
    batch = ds.train.batch(torch.arange(12))
    s.on_epoch_start(0, ds)
    assert s.train_step(batch)["curation"] == 0.0 and s.left == 0  # before E_0
    assert all(v > 0 for v in s.speed_main.values()) and all(v > 0 for v in s.speed_bypass.values())
    assert int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}")) == 1
    s.on_epoch_start(1, ds)
    logs = s.train_step(batch)
    bdr = {m: math.log10(s.speed_bypass[m] / s.speed_main[m]) for m in s.speed_main}
    assert s.care == max(bdr, key=bdr.get) and s.left == 2 and logs["curation"] == 0.0
    speeds = dict(s.speed_main)
    count = int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}"))
    logs = s.train_step(batch)
    assert logs["curation"] == 1.0 and s.speed_main == speeds and int(getattr(model.head.mmtm[0], f"gate_count_{model.modalities[0]}")) == count
    for block in model.head.mmtm:
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in block.gates[s.care].parameters())
        other = next(m for m in model.modalities if m != s.care)
        assert any(p.grad.abs().max() > 0 for p in block.gates[other].parameters())
        assert block.frozen == frozenset()  # evaluation sees live gates
    for m in model.modalities:
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.encoders[m].parameters())
    s.train_step(batch)
    assert s.left == 0


def test_greedy_refuses_heads_without_mmtm_gates():
    ds, model = _model(n=2, fusion="concat")
    with pytest.raises(ValueError, match="greedy needs unimodal branches joined by MMTM blocks"):
        STRATEGIES["greedy"](model, _opt(model), Classification(3))


# ---------------- AMCo (BalanceBenchmark AMCo_trainer.py) ----------------

def test_amco_mask_size_over_the_schedule():
    """eps = 0.3, C = 10: epoch 0 never masks (l stays 0); in epoch 1 l = 0, 0.1, 0.2, 0.3, ... gives
    K = 0, floor(10 sin(pi/6)) = 5, floor(10 sin(pi/3)) = 8, 10, 10; epoch 3 is complete after one batch."""
    assert [mask_size(0.1 * b, 0.3, 10) for b in range(5)] == [0, 5, 8, 10, 10]
    assert mask_size(0.0, 0.3, 10) == 0 and mask_size(0.3, 0.3, 10) == 10
    assert [mask_size(0.3 * b, 0.3, 6) for b in range(3)] == [0, 6, 6]


def test_amco_dependence_share_oracle():
    """One softmax over [z_a; z_v]: z_a = (1, 1), z_v = (0, 0) -> share_a = 2e / (2e + 2) = e / (e + 1)."""
    sh = dependence_shares({"a": torch.tensor([[1.0, 1.0]]), "v": torch.zeros(1, 2)})
    assert sh["a"] == pytest.approx(math.e / (math.e + 1)) and sh["v"] == pytest.approx(1 / (math.e + 1))


def test_amco_step_masks_the_dependent_modalitys_classes_and_keeps_unimodal_terms():
    """Epoch 1, third batch (l = 0.2 -> K = floor(3 sin(pi/3)) = 2 of C = 3): the modality found
    dependent after the previous step has 2 class logits zeroed in the fused sum (same positions for
    every sample), and the loss is CE(L*(sum mu z)) + sum_m CE(z_m) with z_m = W_m f_m + b/2."""
    ds, model = _model(n=2, fusion="concat_mix")
    s = STRATEGIES["amco"](model, _opt(model), Classification(3))
    batch = ds.train.batch(torch.arange(12))
    s.on_epoch_start(1, ds)
    s.train_step(batch)
    s.train_step(batch)
    assert s.progress == pytest.approx(0.2)
    head, mods = model.head, model.modalities
    with torch.no_grad():
        f = model.encode(batch)
        z = {m: f[m].mean(1) @ w.T + head.net.bias / 2 for m, w in zip(mods, head.net.weight.chunk(2, 1))}
        p = torch.cat([z[m] for m in mods], -1).softmax(-1)
        share = {mods[0]: float(p[:, :3].sum(-1).mean()), mods[1]: float(p[:, 3:].sum(-1).mean())}
    dependent = [m for m in mods if share[m] > 0.5]
    assert s.dependent == dependent and dependent
    torch.manual_seed(5)
    zeroed = torch.randperm(3)[:2]
    mu = torch.ones(3, dtype=torch.float64)
    mu[zeroed] = 0
    f = model.encode(batch)
    z = {m: f[m].mean(1) @ w.T + head.net.bias / 2 for m, w in zip(mods, head.net.weight.chunk(2, 1))}
    fused = head.mix(sum(z[m] * mu if m in dependent else z[m] for m in mods))
    ref = F.cross_entropy(fused, batch.y.long()) + sum(F.cross_entropy(z[m], batch.y.long()) for m in mods)
    torch.manual_seed(5)
    logs = _step_matches(model, s, batch, ref)
    assert logs["mask_k"] == 2.0
    s.on_epoch_start(2, ds)
    assert s.dependent == [] and s.progress == 0.0


# ---------------- LFM (NeurIPS24-LFM Crema_epoch.py) ----------------

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


def test_lfm_step_is_twice_the_weighted_sum_on_per_modality_classifiers():
    """Model: per-modality linear classifiers, prediction their mean; at epoch 10 the loss is
    2 (alpha_1 CE(mean_m o_m) + (1 - alpha_1) JS(p_a, p_v)), alpha_1 = 0.248."""
    ds, model = _model(n=2, fusion="late_mean")
    s = STRATEGIES["lfm"](model, _opt(model), Classification(3))
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


# ---------------- ReconBoost (huacong/ReconBoost train.py) ----------------

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


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_reconboost_learner_phase_trains_one_learner_on_the_reweighted_loss(task_name):
    """Phase 1 of stage 0 (learner = the first modality): the gradient equals autograd of
    mean_i (w1 - w2 q_i[y]) l(H(f_m), y_i) / C with q from beta * sum of the other learners
    (no gradient); the other encoders and beta get none."""
    ds, model = _model(n=3, task_name=task_name, fusion="shared")
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["reconboost"](model, _opt(model), task, w1=5.0, w2=1.0)
    s.on_epoch_start(0, ds)
    batch = ds.train.batch(torch.arange(12))
    m, others = model.modalities[0], model.modalities[1:]
    f = model.encode(batch)
    H, beta = model.head.shared, model.head.beta
    with torch.no_grad():
        ens = beta * sum(H(f[k].mean(1)) for k in others)
    fm = H(f[m].mean(1))
    if task_name == "classification":
        q = ens.softmax(-1).gather(1, batch.y.long()[:, None]).squeeze(1)
        ref = ((5 - q) * F.cross_entropy(fm, batch.y.long(), reduction="none")).mean() / 3
    else:
        c = torch.exp(-(ens.reshape(-1) - batch.y).abs())
        ref = ((5 - c) * (fm.reshape(-1) - batch.y).abs()).mean()
    _step_matches(model, s, batch, ref)
    assert beta.grad is None and all(p.grad is None for k in others for p in model.encoders[k].parameters())


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
    """Phase 2: CE(y, beta * sum_m H(f_m)) over every encoder, H and beta."""
    ds, model = _model(n=2, fusion="shared")
    s = STRATEGIES["reconboost"](model, _opt(model), Classification(3), learner_epochs=1, rectify_epochs=1)
    s.on_epoch_start(1, ds)
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


# ---------------- MBSD (BalanceBenchmark MBSD_trainer.py) ----------------

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
