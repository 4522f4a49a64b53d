"""AMCo, OPM, ReconBoost, sample-level valuation, Greedy, LFM and MBSD (issue #13) against numbers worked out by
hand from each method's equations (as written in its module docstring), their N = 2 reduction, and
their step on a real model against an independently written loss. (A real step at N = 2 and 4 for
both tasks, resume == uninterrupted, the branch predictions and 2-rank exactness of every registered
strategy are in test_baselines / test_strategies / test_distributed.)"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.dgl import keep_only
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.amco import mask_ratios
from mmsent.strategies.greedy import imbalance, learning_speed
from mmsent.strategies.lfm import alignment_loss, info_nce
from mmsent.strategies.mbsd import self_distillation
from mmsent.strategies.opm import drop_probabilities, drop_samples
from mmsent.strategies.reconboost import ensemble, reconcile_loss
from mmsent.strategies.valuation import resample_counts, sample_shapley
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


# ---------------- OPM ----------------

def test_opm_drop_probability_oracle():
    """s = (3, 1): rho_a = 3, rho_v = 1/3 -> p_a = lam tanh(2), p_v = 0. N = 3, s = (2, 1, 1):
    rho_1 = (2 + 2) / 2 = 2 -> lam tanh(1); rho_2 = rho_3 = (1/2 + 1) / 2 = 3/4 -> 0."""
    assert drop_probabilities({"a": 3.0, "v": 1.0}, 0.5) == pytest.approx({"a": 0.5 * math.tanh(2), "v": 0.0})
    got = drop_probabilities({"t": 2.0, "a": 1.0, "v": 1.0}, 0.8)
    assert got == pytest.approx({"t": 0.8 * math.tanh(1), "a": 0.0, "v": 0.0})
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):  # the weakest modality is never dropped, whatever the scores
        s = dict(zip("abcde", (torch.rand(5, generator=gen) + 1e-3).tolist()))
        assert drop_probabilities(s, 1.0)[min(s, key=s.get)] == 0.0


def test_opm_drop_zeroes_only_the_drawn_samples():
    feats = {"a": torch.ones(3, 2, 2), "v": torch.full((3, 2, 2), 2.0)}
    out = drop_samples(feats, {"a": torch.tensor([True, False, True])})
    assert out["a"][0].abs().sum() == 0 and out["a"][2].abs().sum() == 0 and torch.equal(out["a"][1], feats["a"][1])
    assert torch.equal(out["v"], feats["v"])


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_opm_step_is_the_task_loss_on_the_dropped_input(task_name):
    ds, model = _model(n=3, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["opm"](model, torch.optim.SGD(model.parameters(), lr=0.0), task, lam=1.0)
    batch = ds.train.batch(torch.arange(16))
    draws = torch.linspace(0.01, 0.99, 16)
    s.dist.rand = lambda n: draws[:n]  # fixed draws: the same numbers for every modality
    with torch.no_grad():  # scores and probabilities by hand, from the branches of the shared head
        feats = model.encode(batch)
        score = {m: float(task.score(model.head(keep_only(feats, [m])), batch.y).sum()) for m in feats}
    ratios = {m: sum(score[m] / score[j] for j in score if j != m) / 2 for m in score}
    probs = {m: math.tanh(r - 1) if r > 1 else 0.0 for m, r in ratios.items()}
    assert max(probs.values()) > 0  # the case drops something
    feats = model.encode(batch)
    dropped = {m: f * (draws >= probs[m]).float().view(-1, 1, 1) for m, f in feats.items()}
    ref = task.loss(model.head(dropped), batch.y)
    logs = _step_matches(model, s, batch, ref)
    assert logs["loss"] == pytest.approx(ref.item(), rel=1e-5)


# ---------------- ReconBoost ----------------

def test_reconboost_reconcilement_oracle():
    """f = (1, 0), F_-m = (0, 1), y = 0: CE = log(1 + 1/e); q = softmax(0, 1), p = softmax(1, 0)
    -> KL(q || p) = (e - 1) / (e + 1). Regression f = 2, F = 0.5, y = 1, lam = 0.5:
    (1)^2 / 2 - 0.5 * (1.5)^2 / 2 = -0.0625."""
    lam = 0.3
    got = reconcile_loss("classification", torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), lam)
    e = math.e
    assert got.item() == pytest.approx(math.log(1 + 1 / e) - lam * (e - 1) / (e + 1), rel=1e-6)
    got = reconcile_loss("regression", torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.tensor([1.0]), 0.5)
    assert got.item() == pytest.approx(-0.0625)


def test_reconboost_at_lambda_one_fits_the_others_pseudo_residual():
    """d/df [CE(y, f) - KL(q || softmax f)] = q - onehot(y): the learner's gradient is the negative
    gradient-boosting residual of the others' ensemble, whatever its own logits (the paper's
    equivalence; lam = 1 is the limit of the allowed range)."""
    f = torch.randn(5, 4, requires_grad=True)
    others, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 0])
    reconcile_loss("classification", f, others, y, 1.0).backward()
    torch.testing.assert_close(f.grad, (others.softmax(-1) - F.one_hot(y, 4)) / 5)


def test_reconboost_ensemble_is_the_learners_product_of_experts():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    torch.testing.assert_close(ensemble("classification", [a, b]), torch.tensor([[4.0, 1.0]]))
    torch.testing.assert_close(ensemble("regression", [a[:, :1], b[:, :1]]), torch.tensor([[2.0]]))


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_reconboost_stage_moves_one_learner_with_the_others_fixed(task_name):
    """Stage 0 trains modality 0's learner alone on its reconcilement loss (gradients == autograd of
    the hand-written loss); under Adam with weight decay the other encoders and weight blocks stay
    exactly where they were; a new stage starts with rectification steps on the ensemble."""
    ds, model = _model(n=3, task_name=task_name, fusion="concat", hidden=0)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["reconboost"](model, torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1), task,
                                 lam=0.4, rectify_steps=1)
    mods, fc = model.head.modalities, model.head.net
    batch = ds.train.batch(torch.arange(16))
    s.on_epoch_start(0, ds)
    feats = model.encode(batch)
    branch = {m: model.head(keep_only(feats, [m])) for m in mods}
    others = [branch[m].detach() for m in mods[1:]]
    fo = sum(others) if task_name == "classification" else sum(others) / 2
    ref = reconcile_loss(task_name, branch[mods[0]], fo, batch.y, 0.4)
    model.zero_grad()
    ref.backward()
    want = {k: v for k, v in _grads(model).items() if k.startswith(f"encoders.{mods[0]}.")}
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    w0 = fc.weight.detach().clone()
    for _ in range(3):
        s.train_step(batch)
        if _ == 0:
            _assert_grads(model, want)
    for k, p in model.named_parameters():
        if k.startswith("encoders.") and not k.startswith(f"encoders.{mods[0]}."):
            assert torch.equal(p, before[k]), k
    d = w0.shape[1] // 3
    assert torch.equal(fc.weight[:, d:], w0[:, d:]) and not torch.equal(fc.weight[:, :d], w0[:, :d])
    s.on_epoch_start(1, ds)  # stage 1: one rectification step (everything moves), then modality 1's learner
    snap = {k: p.detach().clone() for k, p in model.named_parameters()}
    assert s.train_step(batch).get("rectify") == 1.0
    assert all(not torch.equal(p, snap[k]) for k, p in model.named_parameters() if k.startswith("encoders.") and p.dim() > 1)
    snap = {k: p.detach().clone() for k, p in model.named_parameters()}
    assert s.train_step(batch)["stage"] == 1.0
    for k, p in model.named_parameters():
        if k.startswith("encoders.") and p.dim() > 1:
            assert torch.equal(p, snap[k]) == (not k.startswith(f"encoders.{mods[1]}.")), k


def test_reconboost_refuses_heads_without_per_modality_blocks():
    for model_cfg in ({"fusion": "mlpmixer"}, {"fusion": "concat", "hidden": 8}):
        _, model = _model(**model_cfg)
        with pytest.raises(ValueError, match="model.fusion=concat and model.hidden=0"):
            STRATEGIES["reconboost"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3))


# ---------------- Sample-level modality valuation ----------------

def _correct(table):
    return {frozenset(k): torch.tensor([float(v)]) for k, v in table.items()}


def test_valuation_shapley_and_resampling_oracle():
    """N = 2, only v right alone, both together right: phi_a = (0 + 1 - 1) / 2 = 0, phi_v = 1; a is
    below the even share 1/2 -> ceil(2 * 1/2) = 1 copy. A wrong sample that a alone gets right:
    phi_a = 1/2, phi_v = -1/2, share 0 -> v re-sampled ceil(K / 2) times."""
    phi = sample_shapley(_correct({"a": 0, "v": 1, "av": 1}), ["a", "v"])
    assert (phi["a"].item(), phi["v"].item()) == pytest.approx((0.0, 1.0))
    low, n = resample_counts(phi, 2)
    assert (low.item(), n.item()) == (0, 1)
    phi = sample_shapley(_correct({"a": 1, "v": 0, "av": 0}), ["a", "v"])
    assert (phi["a"].item(), phi["v"].item()) == pytest.approx((0.5, -0.5))
    assert [t.item() for t in resample_counts(phi, 3)] == [1, 2]
    # balanced sample: no copies
    assert resample_counts(sample_shapley(_correct({"a": 1, "v": 1, "av": 1}), ["a", "v"]), 2)[1].item() == 0


def test_valuation_three_modality_oracle():
    """v(t) = v(ta) = v(tv) = v(tav) = 1, else 0. Weights 1/3, 1/6, 1/6, 1/3:
    phi_t = 1/3 + 1/6 + 1/6 + 1/3 = 1, phi_a = phi_v = 0 (efficiency: the sum is v(all) = 1)."""
    table = {"t": 1, "a": 0, "v": 0, "ta": 1, "tv": 1, "av": 0, "tav": 1}
    phi = sample_shapley(_correct(table), ["t", "a", "v"])
    assert [phi[m].item() for m in "tav"] == pytest.approx([1.0, 0.0, 0.0])
    low, n = resample_counts(phi, 2)
    assert (low.item(), n.item()) == (1, 1)  # a (first of the tied lowest), ceil(2 / 3) = 1


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_valuation_step_adds_the_resampled_branches(task_name):
    ds, model = _model(n=3, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["valuation"](model, torch.optim.SGD(model.parameters(), lr=0.0), task)
    s.on_epoch_start(0, ds)  # a real valuation of the split: one entry per training sample
    assert s.low.shape == s.copies.shape == (24,) and s.low.max() < 3 and 0 <= s.copies.min() and s.copies.max() <= 2
    batch = ds.train.batch(torch.arange(16))
    mods = model.modalities
    s.low, s.copies = torch.zeros(24, dtype=torch.long), torch.zeros(24, dtype=torch.long)
    s.low[[0, 5, 9, 20]] = torch.tensor([0, 2, 0, 1])
    s.copies[[0, 5, 9, 20]] = torch.tensor([2, 1, 1, 2])  # sample 20 is not in the batch
    feats = model.encode(batch)
    ref = task.loss(model.head(feats), batch.y)
    for i, k, c in ((0, 0, 2), (5, 2, 1), (9, 0, 1)):
        one = {m: f[i:i + 1] for m, f in feats.items()}
        ref = ref + c * task.loss(model.head(keep_only(one, [mods[k]])), batch.y[i:i + 1]) / 16
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    batch.ids = ["same"] * 16  # samples are matched by position in the split, not by id (ids may repeat)
    assert s.train_step(batch)["resampled"] == pytest.approx(4 / 16)
    _assert_grads(model, want)
    batch.index = None  # a batch built by hand, outside a split: one clear refusal
    with pytest.raises(ValueError, match="batch.index"):
        s.train_step(batch)


# ---------------- Greedy ----------------

def test_greedy_speed_and_imbalance_oracle():
    """theta = (3, 4), grad = (1, 2): 5 / 25 = 0.2. Speeds (0.2, 0.05): 1 - 0.05 / 0.2 = 0.75, v slow."""
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([1.0, 2.0])
    assert learning_speed([p]) == pytest.approx(0.2)
    assert imbalance({"a": 0.2, "v": 0.05}) == (pytest.approx(0.75), "v")


def test_greedy_rebalances_the_slow_modality_on_its_branch():
    """alpha = 0: the first normal step triggers a re-balancing phase on the slowest encoder; its step
    is the slow branch's loss (gradients == autograd of it), the other encoders do not even run (their
    inputs would be zeroed: no wasted work, no BatchNorm statistics moved) and none of them moves,
    not by the momentum and weight decay of the normal step before either."""
    ds, model = _model(n=3, task_name="regression")
    s = STRATEGIES["greedy"](model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1),
                             Regression(), alpha=0.0, window=1, rebalance_steps=1)
    batch = ds.train.batch(torch.arange(16))
    s.train_step(batch)
    speeds = {m: learning_speed(list(model.encoders[m].parameters())) for m in model.modalities}
    slow = s.slow
    assert s.left == 1 and slow == min(speeds, key=speeds.get)
    feats = model.encode(batch)
    ref = Regression().loss(model.head(keep_only(feats, [slow])), batch.y)
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    ran = []
    hooks = [model.encoders[m].register_forward_hook(lambda *_, m=m: ran.append(m)) for m in model.modalities]
    assert s.train_step(batch)["rebalance"] == 1.0
    assert ran == [slow]
    for h in hooks:
        h.remove()
    _assert_grads(model, want)
    for k, p in model.named_parameters():
        if k.startswith("encoders.") and not k.startswith(f"encoders.{slow}."):
            assert torch.equal(p, before[k]) and p.grad is None, k
    assert s.left == 0 and "rebalance" not in s.train_step(batch)  # back to normal steps


# ---------------- LFM ----------------

def test_lfm_info_nce_oracle():
    """Orthonormal pairs at tau = 1: logits = I, each row's CE = log(1 + e^-1), both directions."""
    a = torch.eye(2)
    assert info_nce(a, a, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # N = 3 averages the three pairs
    b, c = torch.tensor([[1.0, 1.0], [1.0, -1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    want = (info_nce(a, b, 0.5) + info_nce(a, c, 0.5) + info_nce(b, c, 0.5)) / 3
    torch.testing.assert_close(alignment_loss({"a": a, "b": b, "c": c}, 0.5), want)


def test_lfm_weight_schedule_and_step():
    ds, model = _model(n=3)
    s = STRATEGIES["lfm"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(3),
                          lam=2.0, decay_epochs=4, tau=0.2)
    assert [(s.on_epoch_start(e, ds), s.weight)[1] for e in (0, 2, 4, 7)] == [2.0, 1.0, 0.0, 0.0]
    s.on_epoch_start(1, ds)
    batch = ds.train.batch(torch.arange(16))
    feats = model.encode(batch)
    flat = [feats[m].flatten(1) for m in model.modalities]
    con = sum(info_nce(flat[i], flat[j], 0.2) for i, j in ((0, 1), (0, 2), (1, 2))) / 3
    ref = F.cross_entropy(model.head(feats), batch.y.long()) + 1.5 * con
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    assert s.train_step(batch)["contrastive"] == pytest.approx(con.item(), rel=1e-5)
    _assert_grads(model, want)


def test_lfm_refuses_features_of_different_sizes():
    _, model = _model(n=2)
    m = model.modalities[0]
    model.feature_shapes[m] = (2, 5)
    with pytest.raises(ValueError, match=f"{m}: 10"):
        STRATEGIES["lfm"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3))


# ---------------- AMCo ----------------

def test_amco_mask_ratio_oracle():
    """s = (3, 1), sigma = 0.5, r_max = 0.4: rho_a = 3 -> 0.4 tanh(1); rho_v = 1/3 -> 0."""
    assert mask_ratios({"a": 3.0, "v": 1.0}, 0.5, 0.4) == pytest.approx({"a": 0.4 * math.tanh(1.0), "v": 0.0})
    got = mask_ratios({"t": 2.0, "a": 1.0, "v": 1.0}, 2.0, 0.5)  # rho = (2, 3/4, 3/4)
    assert got == pytest.approx({"t": 0.5 * math.tanh(2.0), "a": 0.0, "v": 0.0})


@pytest.mark.parametrize("task_name", ["classification", "regression"])
def test_amco_step_masks_feature_entries_of_the_modalities_ahead(task_name):
    ds, model = _model(n=3, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["amco"](model, torch.optim.SGD(model.parameters(), lr=0.0), task, sigma=3.0, r_max=0.9)
    batch = ds.train.batch(torch.arange(16))
    draws = torch.linspace(0.0, 1.0, 16 * 2 * 4).reshape(16, 2, 4).double()  # (B, L 2, D 4): per entry
    s.dist.rand = lambda n, *shape: draws[:n].reshape(n, *shape)
    with torch.no_grad():
        feats = model.encode(batch)
        score = {m: float(task.score(model.head(keep_only(feats, [m])), batch.y).sum()) for m in feats}
    ratios = {m: sum(score[m] / score[j] for j in score if j != m) / 2 for m in score}
    r = {m: 0.9 * math.tanh(3.0 * (x - 1)) if x > 1 else 0.0 for m, x in ratios.items()}
    assert 0 < max(r.values()) and min(r.values()) == 0.0
    feats = model.encode(batch)
    masked = {m: f * (draws >= r[m]).double() for m, f in feats.items()}
    ref = task.loss(model.head(masked), batch.y)
    _step_matches(model, s, batch, ref)


# ---------------- MBSD ----------------

def test_mbsd_self_distillation_oracle():
    """Teacher logits (1, 0), student (0, 0), T = 1: KL(p || u) = log 2 + p log p + (1 - p) log(1 - p)
    with p = e / (1 + e). At T = 2 the teacher is (1/2, 0) and the factor T^2 = 4. Regression: the
    Gaussian KL (f_m - f_d)^2 / 2, averaged over the students."""
    p = math.e / (1 + math.e)
    kl1 = math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)
    t, s = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)
    assert self_distillation("classification", t, [s], 1.0).item() == pytest.approx(kl1)
    p2 = math.exp(0.5) / (1 + math.exp(0.5))
    kl2 = math.log(2) + p2 * math.log(p2) + (1 - p2) * math.log(1 - p2)
    assert self_distillation("classification", t, [s], 2.0).item() == pytest.approx(4 * kl2)
    # two students: their mean (a student equal to the teacher contributes 0)
    assert self_distillation("classification", t, [s, t.clone()], 1.0).item() == pytest.approx(kl1 / 2)
    reg = self_distillation("regression", torch.tensor([[1.5]]), [torch.tensor([[0.5]]), torch.tensor([[3.5]])], 3.0)
    assert reg.item() == pytest.approx((0.5 + 2.0) / 2)


def test_mbsd_teacher_is_not_pulled_towards_its_students():
    teacher, student = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True), torch.zeros(1, 3, requires_grad=True)
    self_distillation("classification", teacher, [student], 1.5).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("task_name,n", [("classification", 3), ("regression", 3), ("regression", 2)])
def test_mbsd_step_distills_the_dominant_branch_into_the_others(task_name, n):
    """One step against a loss written here: scores from the branches of the shared head, the
    teacher their argmax (with seed 3 never the first modality), the KL by its definition."""
    torch.manual_seed(3)
    ds, model = _model(n=n, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    lam, tau = 0.7, 2.0
    s = STRATEGIES["mbsd"](model, torch.optim.SGD(model.parameters(), lr=0.0), task, lam=lam, tau=tau)
    batch = ds.train.batch(torch.arange(8))
    feats = model.encode(batch)
    branch = {m: model.head(keep_only(feats, [m])) for m in feats}
    score = {m: float(task.score(b.detach(), batch.y).sum()) for m, b in branch.items()}
    teacher = max(score, key=score.get)
    assert teacher != model.modalities[0]
    students = [m for m in feats if m != teacher]
    if task_name == "classification":
        p = (branch[teacher].detach() / tau).softmax(-1)
        kd = sum((p * (p.log() - (branch[m] / tau).log_softmax(-1))).sum(-1).mean() for m in students) * tau ** 2
    else:
        kd = sum(((branch[m] - branch[teacher].detach()) ** 2).mean() / 2 for m in students)
    kd = kd / len(students)
    ref = task.loss(model.head(feats), batch.y) + lam * kd
    logs = _step_matches(model, s, batch, ref)
    assert logs["distill"] == pytest.approx(kd.item(), rel=1e-9)
    assert {m: logs[f"teacher_{m}"] for m in feats} == {m: float(m == teacher) for m in feats}
