"""What every registered strategy must do, whatever its method: a real step for N = 2 and 4 and
both tasks (with its short_run settings), exact resume. What they score is tests/test_evaluate.py's;
each method's own oracles are in tests/test_dgl.py and tests/strategies/test_<module>.py."""
import math

import pytest
import torch

from mmsent.config import ModelConfig, load_config
from mmsent.data import make_synthetic
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


def short_run(cls, modalities) -> dict:
    """The class's ``short_run`` settings, a modality it names (a unimodal-only model's) replaced by
    one this data has."""
    return {k: (v if k != "modality" or v in modalities else modalities[-1]) for k, v in cls.short_run.items()}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("n,task_name", [(2, "classification"), (4, "regression")])
def test_real_step_any_n_both_tasks(name, n, task_name):
    ds = make_synthetic(n_modalities=n, n_train=24, n_val=8, n_test=4, task=task_name, num_classes=3)
    task = Regression() if task_name == "regression" else Classification(3)
    model = build_model(ModelConfig(**{"dim": 6, "seq_len": 2, "hidden": 8, "dropout": 0.0, **STRATEGIES[name].needs_model}),
                        ds, task.out_dim)
    s = STRATEGIES[name](model, torch.optim.Adam(model.parameters(), lr=1e-2), task, **short_run(STRATEGIES[name], ds.modalities))
    before = [p.clone() for p in model.parameters()]
    for epoch in range(2):
        s.on_epoch_start(epoch, ds)
        logs = s.train_step(ds.train.batch(torch.arange(24)))
    assert all(math.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    pred = s.predict(ds.test.batch(torch.arange(4)))
    assert pred.shape == (4, task.out_dim) and torch.isfinite(pred).all()
