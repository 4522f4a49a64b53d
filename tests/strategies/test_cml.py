"""CML (`mmsent/strategies/cml.py`) against numbers worked out by hand from the reference code as the research notes read it (CML miwae/train.py) (the
papers' method sections were not read; tests/test_golden.py runs the reference itself), its N = 2
reduction, and its gradient mechanics on a real model."""
import math

import pytest
import torch

from mmsent.strategies import STRATEGIES
from mmsent.strategies.cml import confidence, nested_chain, rank_penalty
from mmsent.tasks import Classification, Regression

from helpers import model32 as _model, grads as _grads


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
