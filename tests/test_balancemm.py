"""BalanceMM's further methods (issue #13) against numbers worked out by hand from each paper's
equations, their N = 2 reduction, and their gradient mechanics on a real model. (A real step at
N = 2 and 4 for both tasks, resume == uninterrupted and the branch predictions of every registered
strategy are in test_baselines / test_strategies.)"""
import math

import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.dgl import keep_only
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.strategies.cml import cml_penalty, confidence
from mmsent.strategies.mmcosine import cosine_logits
from mmsent.strategies.umt import distillation
from mmsent.tasks import Classification, Regression


def _model(n=2, task_name="classification", classes=3, **model):
    ds = make_synthetic(n_modalities=n, n_train=24, n_val=8, n_test=8, task=task_name, num_classes=classes)
    out = classes if task_name == "classification" else 1
    cfg = {"dim": 4, "seq_len": 2, "hidden": 8, "dropout": 0.0, **model}
    return ds, build_model(ModelConfig(**cfg), ds, out)


def _grads(model):
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


# ---------------- MMCosine ----------------

def test_mmcosine_two_modality_oracle():
    """f_a = (3, 4) -> (0.6, 0.8); f_v = (1, 0); W_a rows (1, 0), (0, 2); W_v rows (0, 1), (1, 1):
    cos_a = (0.6, 0.8), cos_v = (0, 1/sqrt 2); s = 10 -> z = (6, 8 + 10/sqrt 2)."""
    f = {"a": torch.tensor([[3.0, 4.0]]), "v": torch.tensor([[1.0, 0.0]])}
    w = {"a": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "v": torch.tensor([[0.0, 1.0], [1.0, 1.0]])}
    z = cosine_logits(f, w, 10.0)
    torch.testing.assert_close(z, torch.tensor([[6.0, 8.0 + 10 / math.sqrt(2)]]))
    # each modality's vote is invariant to its own feature and weight norms (the paper's point)
    z2 = cosine_logits({"a": f["a"] * 0.01, "v": f["v"] * 50}, {"a": w["a"] * 7, "v": w["v"]}, 10.0)
    torch.testing.assert_close(z2, z)
    # a zeroed modality votes 0: the branch keeping only v is s * cos_v
    torch.testing.assert_close(cosine_logits({"a": torch.zeros(1, 2), "v": f["v"]}, w, 10.0),
                               torch.tensor([[0.0, 10 / math.sqrt(2)]]))


def test_mmcosine_step_uses_the_linear_heads_weight_blocks_without_bias():
    ds, model = _model(n=3, **STRATEGIES["mmcosine"].needs_model)
    s = STRATEGIES["mmcosine"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3), scaling=4.0)
    batch = ds.train.batch(torch.arange(8))
    with torch.no_grad():
        feats = model.encode(batch)
        W, ref = model.head.net.weight, 0
        for i, m in enumerate(model.head.modalities):  # an independent per-modality reference
            f = feats[m].mean(1)
            block = W[:, i * 4:(i + 1) * 4]
            ref = ref + 4.0 * (f / f.norm(dim=1, keepdim=True)) @ (block / block.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(s.logits(feats), ref)
    s.train_step(batch)
    assert model.head.net.bias.grad is None  # the bias takes no part
    assert model.head.net.weight.grad is not None and model.head.net.weight.grad.abs().sum() > 0


def test_mmcosine_refuses_heads_without_per_modality_blocks():
    for model_cfg in ({"fusion": "mlpmixer"}, {"fusion": "concat", "hidden": 8}, {"fusion": "sum"}):
        _, model = _model(**model_cfg)
        with pytest.raises(ValueError, match="model.fusion=concat and model.hidden=0"):
            STRATEGIES["mmcosine"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3))


# ---------------- CML ----------------

def test_cml_classification_oracle():
    """Full logits (2, 0, 0): Conf = e^2 / (e^2 + 2); without a -> (0, 3, 0): e^3 / (e^3 + 2);
    without v -> (1, 0, 0): e / (e + 2). Only the first removal raises confidence."""
    task = Classification(3)
    y = torch.tensor([0])
    full = confidence(task, torch.tensor([[2.0, 0, 0]]), y)
    red = {"a": confidence(task, torch.tensor([[0.0, 3, 0]]), y), "v": confidence(task, torch.tensor([[1.0, 0, 0]]), y)}
    e = math.e
    torch.testing.assert_close(full, torch.tensor([e**2 / (e**2 + 2)]))
    want = e**3 / (e**3 + 2) - e**2 / (e**2 + 2)
    torch.testing.assert_close(cml_penalty(full, red), torch.tensor(want))
    # a mean over samples: a second sample with no violation halves it
    full2 = torch.cat([full, torch.tensor([0.99])])
    red2 = {k: torch.cat([v, torch.tensor([0.5])]) for k, v in red.items()}
    torch.testing.assert_close(cml_penalty(full2, red2), torch.tensor(want / 2))


def test_cml_regression_confidence_is_closeness_to_the_label():
    """Full prediction 0.5 for y = 1 -> e^-0.5; a removal predicting 0.9 -> e^-0.1 (violation), one
    predicting -1 -> e^-2 (none): penalty e^-0.1 - e^-0.5."""
    task, y = Regression(), torch.tensor([1.0])
    full = confidence(task, torch.tensor([[0.5]]), y)
    red = {"a": confidence(task, torch.tensor([[0.9]]), y), "v": confidence(task, torch.tensor([[-1.0]]), y)}
    torch.testing.assert_close(cml_penalty(full, red), torch.tensor(math.exp(-0.1) - math.exp(-0.5)))


@pytest.mark.parametrize("n", [2, 4])
def test_cml_gradient_is_task_plus_lambda_hinge(n):
    """The step's gradient equals autograd of an independently written loss: cross-entropy plus
    lambda * mean_i sum_m relu(maxprob(head(x without m)) - maxprob(head(x)))."""
    ds, model = _model(n=n)
    batch = ds.train.batch(torch.arange(16))
    torch.manual_seed(0)
    feats = model.encode(batch)
    logits = model.head(feats)
    p_full = logits.softmax(-1).max(-1).values
    hinge = 0
    for m in feats:
        p = model.head(keep_only(feats, [k for k in feats if k != m])).softmax(-1).max(-1).values
        hinge = hinge + (p - p_full).clamp(min=0)
    ref = torch.nn.functional.cross_entropy(logits, batch.y.long()) + 0.7 * hinge.mean()
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    s = STRATEGIES["cml"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(3), lam=0.7)
    s.train_step(batch)
    got = _grads(model)
    assert hinge.sum() > 0  # the case exercises the regulariser
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)


# ---------------- UMT ----------------

def test_umt_distillation_oracle():
    """sum over modalities of the mean squared difference: ((1 + 4) / 2) + ((0 + 9) / 2) = 7."""
    student = {"a": torch.tensor([[1.0, 2.0]]), "v": torch.tensor([[0.0, 3.0]])}
    teacher = {"a": torch.zeros(1, 2), "v": torch.zeros(1, 2)}
    torch.testing.assert_close(distillation(student, teacher), torch.tensor(7.0))
    # (B, L, D) sequences are flattened per sample; (B, C, H, W) maps pooled to channels
    maps = {"a": torch.ones(1, 2, 3, 3)}
    torch.testing.assert_close(distillation(maps, {"a": torch.zeros(1, 2, 3, 3)}), torch.tensor(1.0))


def test_umt_teachers_are_trained_frozen_and_pull_the_encoders():
    ds, model = _model(n=3, task_name="regression")
    s = STRATEGIES["umt"](model, torch.optim.SGD(model.parameters(), lr=0.05), Regression(), lam=2.0, teacher_epochs=3)
    s.batch_size = 8
    init = {m: [p.clone() for p in model.encoders[m].parameters()] for m in model.modalities}
    s.on_epoch_start(0, ds)
    for m, t in s.teachers.items():
        assert all(not p.requires_grad for p in t.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(init[m], t.parameters())), m  # stage 1 trained it
    # the step's gradient is autograd of task loss + lambda * MSE to the frozen teachers' features
    batch = ds.train.batch(torch.arange(16))
    feats = model.encode(batch)
    ref = (model.head(feats).reshape(-1) - batch.y).abs().mean()  # MOSI's L1 task loss
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


def test_cml_removals_leave_batchnorm_statistics_alone():
    """The N single-modality removals are masked passes: they go through ``head_masked`` (BatchNorm
    running statistics untouched, method.md), the full prediction through ``head`` once."""
    ds, model = _model(n=3)
    calls = {"head": 0, "masked": 0}
    head, masked = model.head.forward, model.head_masked

    def count_head(*a, **k):
        calls["head"] += 1
        return head(*a, **k)

    def count_masked(*a, **k):
        calls["masked"] += 1
        return masked(*a, **k)

    model.head.forward, model.head_masked = count_head, count_masked
    s = STRATEGIES["cml"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3))
    s.train_step(ds.train.batch(torch.arange(8)))
    assert calls["masked"] == 3
    assert calls["head"] == 1 + 3  # head_masked runs the head inside, keeping its buffers
