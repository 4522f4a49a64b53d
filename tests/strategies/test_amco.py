"""AMCo (`mmsent/strategies/amco.py`) against oracles worked by hand from its reference's semantics (shared
docs/research/balancemm-methods.md, which reads the official code or BalanceBenchmark's), at N = 2 first, then
the N > 2 extension reducing to it, and its step on a real model against a loss written here independently of
mmsent's code. Reference read: BalanceBenchmark AMCo_trainer.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmsent.strategies import STRATEGIES
from mmsent.strategies.amco import dependence_shares, mask_size
from mmsent.tasks import Classification

from helpers import model64 as _model, step_matches as _step_matches, sgd as _opt


def test_amco_mask_size_over_the_schedule():
    """eps = 0.3, C = 10: epoch 0 never masks (l stays 0); in epoch 1 l = 0, 0.1, 0.2, 0.3, ... gives
    K = 0, floor(10 sin(pi/6)) = 5, floor(10 sin(pi/3)) = 8, 10, 10; epoch 3 is complete after one batch."""
    assert [mask_size(0.1 * b, 0.3, 10) for b in range(5)] == [0, 5, 8, 10, 10]
    assert mask_size(0.0, 0.3, 10) == 0 and mask_size(0.3, 0.3, 10) == 10
    assert [mask_size(0.3 * b, 0.3, 6) for b in range(3)] == [0, 6, 6]


def test_amco_dependence_share_oracle():
    """One softmax over [z_a; z_v]: z_a = (1, 1), z_v = (0, 0) -> share_a = 2e / (2e + 2) = e / (e + 1)."""
    sh = dependence_shares({"a": torch.tensor([[1.0, 1.0]]), "v": torch.zeros(1, 2)})
    assert sh["a"] == pytest.approx(math.e / (math.e + 1)) and sh["v"] == pytest.approx(1 / (math.e + 1))


def test_amco_step_masks_the_dependent_modalitys_classes_and_keeps_unimodal_terms():
    """Epoch 1, third batch (l = 0.2 -> K = floor(3 sin(pi/3)) = 2 of C = 3): the modality found
    dependent after the previous step has 2 class logits zeroed in the fused sum (same positions for
    every sample), and the loss is CE(L*(sum mu z)) + sum_m CE(z_m) with z_m = W_m f_m + b/2."""
    ds, model = _model(n=2, fusion="concat_mix")
    s = STRATEGIES["amco"](model, _opt(model), Classification(3))
    batch = ds.train.batch(torch.arange(12))
    s.on_epoch_start(1, ds)
    s.train_step(batch)
    s.train_step(batch)
    assert s.progress == pytest.approx(0.2)
    head, mods = model.head, model.modalities
    with torch.no_grad():
        f = model.encode(batch)
        z = {m: f[m].mean(1) @ w.T + head.net.bias / 2 for m, w in zip(mods, head.net.weight.chunk(2, 1))}
        p = torch.cat([z[m] for m in mods], -1).softmax(-1)
        share = {mods[0]: float(p[:, :3].sum(-1).mean()), mods[1]: float(p[:, 3:].sum(-1).mean())}
    dependent = [m for m in mods if share[m] > 0.5]
    assert s.dependent == dependent and dependent
    torch.manual_seed(5)
    zeroed = torch.randperm(3)[:2]
    mu = torch.ones(3, dtype=torch.float64)
    mu[zeroed] = 0
    f = model.encode(batch)
    z = {m: f[m].mean(1) @ w.T + head.net.bias / 2 for m, w in zip(mods, head.net.weight.chunk(2, 1))}
    fused = head.mix(sum(z[m] * mu if m in dependent else z[m] for m in mods))
    ref = F.cross_entropy(fused, batch.y.long()) + sum(F.cross_entropy(z[m], batch.y.long()) for m in mods)
    torch.manual_seed(5)
    logs = _step_matches(model, s, batch, ref)
    assert logs["mask_k"] == 2.0
    s.on_epoch_start(2, ds)
    assert s.dependent == [] and s.progress == 0.0
