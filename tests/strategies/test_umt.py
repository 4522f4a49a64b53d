"""UMT (`mmsent/strategies/umt.py`) against numbers worked out by hand from BalanceBenchmark's UMT trainer as the research notes read it (the
papers' method sections were not read; tests/test_golden.py runs the reference itself), its N = 2
reduction, and its gradient mechanics on a real model."""
import pytest
import torch

from mmsent.strategies import STRATEGIES
from mmsent.strategies.umt import distillation
from mmsent.tasks import Classification, Regression

from helpers import model32 as _model, grads as _grads


def test_umt_default_weight_is_the_references_10():
    """BalanceBenchmark's UMT "scaling" is 10."""
    assert STRATEGIES["umt"].Settings().lam == 10.0


def test_umt_distillation_oracle():
    """sum over modalities of the mean squared difference: ((1 + 4) / 2) + ((0 + 9) / 2) = 7."""
    student = {"a": torch.tensor([[1.0, 2.0]]), "v": torch.tensor([[0.0, 3.0]])}
    teacher = {"a": torch.zeros(1, 2), "v": torch.zeros(1, 2)}
    torch.testing.assert_close(distillation(student, teacher), torch.tensor(7.0))
    # (B, L, D) sequences are flattened per sample; (B, C, H, W) maps pooled to channels
    maps = {"a": torch.ones(1, 2, 3, 3)}
    torch.testing.assert_close(distillation(maps, {"a": torch.zeros(1, 2, 3, 3)}), torch.tensor(1.0))


@pytest.mark.parametrize("n,task_name", [(2, "classification"), (3, "regression")])
def test_umt_teachers_are_trained_frozen_and_pull_the_encoders(n, task_name):
    """Stage 1 trains one frozen teacher per modality; a stage-2 step's gradient is autograd of the
    task loss + lambda * sum_m MSE to the teachers' features (N = 2 classification, the reference's
    setting, and N = 3 regression)."""
    ds, model = _model(n=n, task_name=task_name)
    task = Classification(3) if task_name == "classification" else Regression()
    s = STRATEGIES["umt"](model, torch.optim.SGD(model.parameters(), lr=0.05), task, lam=2.0, teacher_epochs=3)
    s.batch_size = 8
    init = {m: [p.clone() for p in model.encoders[m].parameters()] for m in model.modalities}
    s.on_epoch_start(0, ds)
    for m, t in s.teachers.items():
        assert all(not p.requires_grad for p in t.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(init[m], t.parameters())), m  # stage 1 trained it
    # the step's gradient is autograd of task loss + lambda * MSE to the frozen teachers' features
    batch = ds.train.batch(torch.arange(16))
    feats = model.encode(batch)
    ref = task.loss(model.head(feats), batch.y)  # CE, or MOSI's L1
    for m in feats:
        with torch.no_grad():
            target = s.teachers[m](batch.x[m], batch.mask[m])
        ref = ref + 2.0 * ((feats[m] - target) ** 2).mean()
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    before = {m: [p.clone() for p in t.parameters()] for m, t in s.teachers.items()}
    s.train_step(batch)
    got = _grads(model)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)
    for m, t in s.teachers.items():  # the student's step leaves the teachers alone
        assert all(torch.equal(a, b) for a, b in zip(before[m], t.parameters()))
