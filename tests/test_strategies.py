"""Every registered strategy takes a real step; DGL's step has DGL's gradients; unimodal trains
only its modality."""
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.dgl import zero_others
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Regression

ARGS = {"unimodal": {"modality": "audio"}, "dgl": {"alpha": 2.0}}


def setup(fusion="mlpmixer", n=3):
    ds = make_synthetic(n_modalities=n, n_train=16, n_val=4, n_test=4)
    model = build_model(ModelConfig(dim=8, seq_len=2, hidden=16, dropout=0.0, fusion=fusion), ds, 1)
    return ds, model, ds.train.batch(torch.arange(16))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_one_step_changes_parameters_and_stays_finite(name):
    ds, model, batch = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = STRATEGIES[name](model, opt, Regression(), **ARGS.get(name, {}))
    strategy.on_epoch_start(0, ds)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = strategy.train_step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_dgl_step_applies_alpha_unimodal_to_encoders_and_multimodal_to_head():
    ds, model, batch = setup()
    task = Regression()
    feats = model.encode(batch)
    enc_p = [p for e in model.encoders.values() for p in e.parameters()]
    head_p = list(model.head.parameters())
    want_enc = torch.autograd.grad(2.0 * sum(task.loss(model.head(zero_others(feats, m)), batch.y) for m in feats),
                                   enc_p, retain_graph=True)
    want_head = torch.autograd.grad(task.loss(model.head({m: f.detach() for m, f in feats.items()}), batch.y), head_p)
    lr = 0.5
    before = [p.detach().clone() for p in enc_p + head_p]
    strategy = STRATEGIES["dgl"](model, torch.optim.SGD(model.parameters(), lr=lr), task, alpha=2.0)
    strategy.train_step(batch)
    for p0, g, p in zip(before, list(want_enc) + list(want_head), enc_p + head_p):
        torch.testing.assert_close(p.detach(), p0 - lr * g, atol=1e-6, rtol=1e-5)


def test_unimodal_trains_only_its_encoder_and_the_head():
    ds, model, batch = setup()
    strategy = STRATEGIES["unimodal"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), modality="vision")
    before = {m: [p.clone() for p in e.parameters()] for m, e in model.encoders.items()}
    strategy.train_step(batch)
    for m, ps in before.items():
        moved = any(not torch.equal(a, b) for a, b in zip(ps, model.encoders[m].parameters()))
        assert moved == (m == "vision"), m
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        STRATEGIES["unimodal"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), modality="smell")


def test_dgl_runs_encoders_once_per_step():
    ds, model, batch = setup()
    calls = {m: 0 for m in model.encoders}
    for m, e in model.encoders.items():
        e.register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    STRATEGIES["dgl"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression()).train_step(batch)
    assert calls == {m: 1 for m in model.encoders}
