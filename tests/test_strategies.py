"""What every registered strategy must do, whatever its method: a real step for N = 2 and 4 and
both tasks, exact resume; DGL's step has DGL's gradients; unimodal trains only its modality. What
they score is tests/test_evaluate.py's; each method's own oracles are in tests/strategies/test_<module>.py."""
import math

import pytest
import torch

from mmsent.config import ModelConfig, load_config
from mmsent.data import make_synthetic
from mmsent.dgl import zero_others
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Classification, Regression
from mmsent.train import fit

# each strategy's `short_run` settings: under them its between-epoch work happens within two epochs


def setup(fusion="mlpmixer", n=3, **model):
    ds = make_synthetic(n_modalities=n, n_train=16, n_val=4, n_test=4)
    model = build_model(ModelConfig(**{"dim": 8, "seq_len": 2, "hidden": 16, "dropout": 0.0, "fusion": fusion, **model}), ds, 1)
    return ds, model, ds.train.batch(torch.arange(16))


def _cfg(tmp_path, name, epochs, out):
    args = [f"strategy.{k}={v}" for k, v in STRATEGIES[name].short_run.items()]
    args += [f"model.{k}={v}" for k, v in STRATEGIES[name].needs_model.items()]
    return load_config(None, [f"strategy={name}", f"train.epochs={epochs}", "train.patience=100", "train.grad_probe=false",
                              "train.probe=false", "data.batch_size=16", "model.dim=8", "model.hidden=16",
                              "model.seq_len=2", f"out={tmp_path / out}", *args])


class _Stop(Exception):
    pass


def _stop_after(last: int):
    def on_epoch(epoch, val):
        if epoch == last:
            raise _Stop
    return on_epoch


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resume_equals_an_uninterrupted_run(tmp_path, name):
    """A 5-epoch run stopped after epoch 2 and resumed == 5 epochs straight, bit for bit on CPU:
    emptying a strategy's load_state_dict (G-Blending's weights, PMR's prototypes, AGM's running
    means, MLA's projector, D&R's count, the counted actions) breaks it."""
    ds = make_synthetic(n_modalities=3, n_train=48, n_val=16, n_test=16)
    straight = fit(_cfg(tmp_path, name, 5, "a"), quiet=True, dataset=ds)
    with pytest.raises(_Stop):
        fit(_cfg(tmp_path, name, 5, "b"), quiet=True, dataset=ds, on_epoch=_stop_after(2))
    resumed = fit(_cfg(tmp_path, name, 5, "b"), quiet=True, dataset=ds, resume=True)
    assert resumed.get("actions") == straight.get("actions") and resumed.get("schedule") == straight.get("schedule")
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]
    last = [torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("a", "b")]
    for k, v in last[0]["model"].items():
        assert torch.equal(v, last[1]["model"][k]), k


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
