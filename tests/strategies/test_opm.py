"""OPM (`mmsent/strategies/opm.py`) against oracles worked by hand from its reference's semantics (shared
docs/research/balancemm-methods.md, which reads the official code or BalanceBenchmark's), at N = 2 first, then
the N > 2 extension reducing to it, and its step on a real model against a loss written here independently of
mmsent's code. Reference read: BML_TPAMI2024 Classifier.py / train_opm.sh."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.dgl import keep_only
from mmsent.strategies import STRATEGIES
from mmsent.strategies.opm import drop_probabilities, rescale
from mmsent.tasks import Classification, Regression

from helpers import model64 as _model, step_matches as _step_matches, sgd as _opt


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
