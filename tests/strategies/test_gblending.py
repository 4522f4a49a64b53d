"""G-Blending (`mmsent/strategies/gblending.py`) against the numeric oracles of shared/docs/research/baselines.md
§13, its N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.gblending import blend_weights
from mmsent.tasks import Classification
from mmsent.evaluate import branch_predictions


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
        preds = branch_predictions(strategy, split)
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


def test_gblending_copies_train_at_the_live_learning_rate():
    """The copies' optimizer mirrors the run's parameter groups as they stand at the estimate: after
    a step schedule (lr x 0.1) and with a second group at its own rate (BERT's), each copied
    parameter sits in its original's group with that group's current lr, momentum and weight decay
    (it was one group at the constructor's lr); its momentum starts empty."""
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=8, n_test=4, task="classification", num_classes=3)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0), ds, 3)
    enc = [p for e in model.encoders.values() for p in e.parameters()]
    head = list(model.head.parameters())
    opt = torch.optim.SGD([{"params": head, "lr": 0.1}, {"params": enc, "lr": 0.01}], lr=0.1, momentum=0.9,
                          weight_decay=1e-4)
    s = STRATEGIES["gblending"](model, opt, Classification(3), super_epoch=1, batch_size=8)
    s.train_step(ds.train.batch(torch.arange(8)))  # some momentum in the run's optimizer
    for g in opt.param_groups:  # what set_epoch_lr does at a step of the schedule
        g["lr"] *= 0.1
    seen = []
    s.train_copy = lambda trainer, data, epochs, after_epoch=None: seen.append(trainer)
    s.on_epoch_start(0, ds)
    assert len(seen) == 3
    for trainer in seen:
        groups = trainer.optimizer.param_groups
        assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])
        assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in groups)
        copy_names = {id(p): n for n, p in trainer.model.named_parameters()}
        assert [copy_names[id(p)] for p in groups[1]["params"]] == [n for n, _ in model.encoders.named_parameters(prefix="encoders")]
        assert not trainer.optimizer.state
