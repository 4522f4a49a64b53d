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


def test_amco_step_masks_the_dependent_modalitys_classes_in_its_unimodal_term():
    """Epoch 1, second batch (l = 0.1 -> K = floor(3 sin(pi/6)) = 1 of C = 3): the modality found
    dependent after the first step (unmasked logits there, K = 0) has one class logit zeroed, the
    same position for every sample, in the fused sum AND in its unimodal term (BalanceBenchmark
    overwrites its unimodal result with the masked one): the loss is
    CE(L*(sum mu z)) + sum_m CE(mu_m z_m) with z_m = W_m f_m + b/2, and the next dependence test
    reads the masked logits too."""
    ds, model = _model(n=2, fusion="concat_mix")
    s = STRATEGIES["amco"](model, _opt(model), Classification(3))
    batch = ds.train.batch(torch.arange(12))
    s.on_epoch_start(1, ds)
    head, mods = model.head, model.modalities

    def logits():
        f = model.encode(batch)
        return {m: f[m].mean(1) @ w.T + head.net.bias / 2 for m, w in zip(mods, head.net.weight.chunk(2, 1))}

    def shares(z):
        p = torch.cat([z[m] for m in mods], -1).softmax(-1)
        return {mods[0]: float(p[:, :3].sum(-1).mean()), mods[1]: float(p[:, 3:].sum(-1).mean())}

    with torch.no_grad():
        dependent = [m for m, v in shares(logits()).items() if v > 0.5]
    assert s.train_step(batch)["mask_k"] == 0.0 and s.progress == pytest.approx(0.1)
    assert s.dependent == dependent and dependent
    torch.manual_seed(5)
    zeroed = torch.randperm(3)[:1]
    mu = torch.ones(3, dtype=torch.float64)
    mu[zeroed] = 0
    z = logits()
    masked = {m: z[m] * mu if m in dependent else z[m] for m in mods}
    ref = F.cross_entropy(head.mix(sum(masked.values())), batch.y.long()) \
        + sum(F.cross_entropy(masked[m], batch.y.long()) for m in mods)
    torch.manual_seed(5)
    logs = _step_matches(model, s, batch, ref)
    assert logs["mask_k"] == 1.0 and s.actions["masked_steps"] == 1
    with torch.no_grad():
        assert s.dependent == [m for m, v in shares({m: v.detach() for m, v in masked.items()}).items() if v > 0.5]
    s.on_epoch_start(2, ds)
    assert s.dependent == [] and s.progress == 0.0


def test_amco_after_its_window_trains_the_fused_loss_alone():
    """Past modulation_end (set: 8): no mask, no unimodal terms, the dependence flags left as they
    were. Left at None the window is BalanceBenchmark's 80 of its 30 epochs scaled, past any run's end."""
    ds, model = _model(n=2, fusion="concat_mix")
    assert STRATEGIES["amco"](model, _opt(model), Classification(3), epochs=10).modulation_end == 27
    s = STRATEGIES["amco"](model, _opt(model), Classification(3), epochs=10, modulation_end=8)
    assert s.modulation_end == 8 and s.schedule == {"modulation_end": 8}
    batch = ds.train.batch(torch.arange(12))
    s.on_epoch_start(9, ds)
    s.dependent = [model.modalities[0]]
    ref = F.cross_entropy(model.head(model.encode(batch)), batch.y.long())
    logs = _step_matches(model, s, batch, ref)
    assert logs["mask_k"] == 0.0 and s.dependent == [model.modalities[0]]
