"""MMCosine (`mmsent/strategies/mmcosine.py`) against numbers worked out by hand from the reference code as the research notes read it (MMCosine_ICASSP23 main_CD.py) (the
papers' method sections were not read; tests/test_golden.py runs the reference itself), its
N = 2 reduction, and its gradient mechanics on a real model."""
import math

import pytest
import torch

from mmsent.strategies import STRATEGIES
from mmsent.strategies.mmcosine import cosine_logits
from mmsent.tasks import Classification

from helpers import model32 as _model


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


def test_mmcosine_is_scored_by_its_cosine_classifier():
    """Validation and test score MMCosine's own classifier (the reference evaluates its cosine
    logits, not the linear head's): each branch is s * cos of the kept modality alone (a zeroed
    modality votes 0), built here from the head's weight blocks and pooled features by hand."""
    import torch.nn.functional as F

    from mmsent.evaluate import branch_predictions

    ds, model = _model(n=3, **STRATEGIES["mmcosine"].needs_model)
    s = STRATEGIES["mmcosine"](model, torch.optim.SGD(model.parameters(), lr=0.1), Classification(3), scaling=4.0)
    s.train_step(ds.train.batch(torch.arange(8)))
    preds = branch_predictions(s, ds.test, batch_size=3)
    model.eval()
    with torch.no_grad():
        feats = model.encode(ds.test.batch(torch.arange(len(ds.test))))
        fc = model.head.net  # concat with hidden=0: one Linear over the concatenated pooled features
        cos, start = {}, 0
        for m in s.order:  # the fc's input is the modalities' pooled features, concatenated in order
            d = feats[m].shape[-1]
            cos[m] = 4.0 * F.normalize(feats[m].mean(1), dim=-1) @ F.normalize(fc.weight[:, start:start + d], dim=-1).T
            start += d
        for m in s.order:
            torch.testing.assert_close(preds[m], cos[m], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(preds["multi"], sum(cos.values()), rtol=1e-5, atol=1e-5)
