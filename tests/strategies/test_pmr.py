"""PMR (`mmsent/strategies/pmr.py`) against the numeric oracles of shared/docs/research/baselines.md §13, its
N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.pmr import pmr_betas, prototype_logits
from mmsent.tasks import Classification


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
    s.compute_prototypes = lambda split, rows=None, smooth=True: seen.append(rows.tolist()) or real(split, rows, smooth)
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
