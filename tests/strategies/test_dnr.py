"""D&R (`mmsent/strategies/dnr.py`) against the numeric oracles of shared/docs/research/baselines.md §13, its
N-modality formulas against the official two-modality forms, and its gradient mechanics."""
import pytest
import torch

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.models import build_model
from mmsent.strategies.dnr import DnR, diagnose_after, purity_score, relearn_strength
from mmsent.tasks import Regression


@pytest.mark.parametrize("gap,w", [(0.05, 0.148885), (0.1, 0.291313), (0.2, 0.537050), (0.4, 0.833655)])
def test_dnr_strength_oracle(gap, w):
    assert relearn_strength(gap, 3.0) == pytest.approx(w, abs=1e-6)
    assert relearn_strength(-gap, 3.0) == pytest.approx(w, abs=1e-6)


def test_dnr_purity_and_schedule():
    assert purity_score([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert purity_score([0, 1, 0, 1], [0, 0, 0, 0]) == 0.5
    done, fired = 0, []
    for e in range(100):
        if diagnose_after(e, 20, done, 3):
            fired.append(e)
            done += 1
    assert fired == [20, 40, 60]


def test_dnr_relearn_is_convex_and_leaves_buffers():
    ds = make_synthetic(n_modalities=2, n_train=16, n_val=8, n_test=4)
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=8, dropout=0.0, encoder="lstm"), ds, 1)
    s = DnR(model, torch.optim.SGD(model.parameters(), lr=0.1), Regression())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    now = {m: [p.clone() for p in e.parameters()] for m, e in model.encoders.items()}
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k not in dict(model.named_parameters())}
    s.relearn({"m0": 0.25, "m1": 0.0})
    for p, p0, p1 in zip(model.encoders["m0"].parameters(), s.init["m0"], now["m0"]):
        torch.testing.assert_close(p, 0.25 * p0 + 0.75 * p1)
    for p, p1 in zip(model.encoders["m1"].parameters(), now["m1"]):
        torch.testing.assert_close(p, p1)
    for k, v in buffers.items():
        torch.testing.assert_close(model.state_dict()[k], v)
