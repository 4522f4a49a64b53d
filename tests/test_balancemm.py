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
from mmsent.strategies.cml import confidence, nested_chain, rank_penalty
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

def test_cml_nested_chain_is_a_random_order_per_sample():
    """Draws (0.7, 0.1, 0.4): modality 1 goes first, then 2, then 0 -> removal ranks (2, 0, 1);
    every sample's ranks are a permutation of 0 .. N-1."""
    ranks = nested_chain(torch.tensor([[0.7, 0.1, 0.4], [0.2, 0.9, 0.5]]))
    assert ranks.tolist() == [[2, 0, 1], [0, 2, 1]]
    many = nested_chain(torch.rand(500, 4))
    assert all(sorted(r) == [0, 1, 2, 3] for r in many.tolist())
    # uniform: each modality is removed first about a quarter of the time
    first = torch.bincount((many == 0).float().argmax(1), minlength=4).float() / 500
    assert torch.all((first > 0.15) & (first < 0.35)), first


def test_cml_rank_penalty_oracle_is_a_sum_with_both_masks():
    """Reference semantics (MIWAE form), N = 2, chain (full, reduced):
    sample 0: full right (g = 1), conf 0.6 -> 0.8: first term relu(0.2) = 0.2;
    sample 1: both wrong (u = 1), conf 0.5 -> 0.9: second term relu(0.4) = 0.4;
    sample 2: full wrong, reduced right: no term fires although conf rises 0.3 -> 0.7;
    sample 3: full right, conf falls 0.9 -> 0.4: 0. The penalty is the SUM, 0.6 (not the mean)."""
    full = torch.tensor([0.6, 0.5, 0.3, 0.9], requires_grad=True)
    red = torch.tensor([0.8, 0.9, 0.7, 0.4], requires_grad=True)
    right = [torch.tensor([True, False, False, True]), torch.tensor([True, False, True, False])]
    pen = rank_penalty([full, red], right, eps=0.0)
    torch.testing.assert_close(pen, torch.tensor(0.6))
    pen.backward()
    # g-term: gradient through both confidences; u-term: the full side is stop-gradient
    assert full.grad.tolist() == [-1.0, 0.0, 0.0, 0.0]
    assert red.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    # a margin eps lowers each active hinge
    torch.testing.assert_close(rank_penalty([full, red], right, eps=0.1), torch.tensor(0.1 + 0.3))


def test_cml_confidences():
    """max softmax probability; regression: exp(-|pred - y|)."""
    e = math.e
    torch.testing.assert_close(confidence(Classification(3), torch.tensor([[2.0, 0, 0]]), torch.tensor([1])),
                               torch.tensor([e**2 / (e**2 + 2)]))
    torch.testing.assert_close(confidence(Regression(), torch.tensor([[0.5]]), torch.tensor([1.0])),
                               torch.tensor([math.exp(-0.5)]))


@pytest.mark.parametrize("n", [2, 3])
def test_cml_step_is_chain_ce_plus_beta_over_100_summed_hinge(n):
    """The step's gradient equals autograd of a loss written independently from the reference's
    semantics: per sample a random removal order from the step's draws (the same RNG stream),
    L = (1/N) sum_k CE(h(x^{S_k})) + beta/100 * sum_i sum_k [g-hinge + u-hinge]."""
    ds, model = _model(n=n)
    model = model.double()
    for split in (ds.train,):
        split.x = {m: v.double() for m, v in split.x.items()}
    batch = ds.train.batch(torch.arange(16))
    mods = model.modalities
    torch.manual_seed(3)
    u = torch.rand(16, n)
    order = u.argsort(1).argsort(1)  # order[i, j]: the step at which sample i loses modality j
    feats = model.encode(batch)
    preds = []
    for k in range(n):
        keep = {m: (order[:, j] >= k).double()[:, None, None] for j, m in enumerate(mods)}
        preds.append(model.head({m: f * keep[m] for m, f in feats.items()}))
    ce = sum(torch.nn.functional.cross_entropy(p, batch.y.long()) for p in preds) / n
    conf = [p.softmax(-1).max(-1).values for p in preds]
    ok = [p.argmax(-1) == batch.y for p in preds]
    hinge = 0
    for k in range(n - 1):
        hinge = hinge + torch.relu((conf[k + 1] - conf[k]) * ok[k].double()).sum()
        hinge = hinge + torch.relu((conf[k + 1] - conf[k].detach()) * (~ok[k] & ~ok[k + 1]).double()).sum()
    ref = ce + 10 / 100 * hinge
    model.zero_grad()
    ref.backward()
    want = _grads(model)
    s = STRATEGIES["cml"](model, torch.optim.SGD(model.parameters(), lr=0.0), Classification(3))
    torch.manual_seed(3)
    s.train_step(batch)
    got = _grads(model)
    assert float(hinge.detach()) > 0  # the case exercises the ranking term
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=k)


# ---------------- UMT ----------------

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
    assert calls["masked"] == 2  # the chain's N - 1 reduced inputs
    assert calls["head"] == 1 + 2  # head_masked runs the head inside, keeping its buffers
