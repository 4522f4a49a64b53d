"""A unimodal-only model (`strategy=unimodal`, mmsent/strategies/base.py OneModality): the
paper's per-modality rows train one encoder and the head, and score that modality's branch."""
import pytest
import torch

from mmsent.dgl import zero_others
from mmsent.evaluate import branch_predictions
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Regression

from helpers import model32


def setup():
    ds, model = model32(n=3, task_name="regression")  # modalities text, audio, vision
    return ds, model, ds.train.batch(torch.arange(16))


def test_a_unimodal_models_own_prediction_is_its_branch():
    """Validation selects on "multi": for a unimodal-only model that must be its modality alone
    (under MMTM the untrained encoders' maps gate the trained one; Audio-only was selected at random)."""
    ds, model, batch = setup()
    s = STRATEGIES["unimodal"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), modality="audio")
    s.train_step(batch)
    preds = branch_predictions(s, ds.test)
    torch.testing.assert_close(preds["multi"], preds["audio"], rtol=0, atol=0)
    assert not torch.allclose(preds["multi"], preds["vision"])
    model.eval()
    with torch.no_grad():  # the branch by hand: the shared head with every other modality zeroed
        feats = model.encode(ds.test.batch(torch.arange(len(ds.test))))
        torch.testing.assert_close(preds["multi"], model.head(zero_others(feats, "audio")), rtol=1e-6, atol=1e-6)


def test_unimodal_trains_only_its_encoder_and_the_head():
    ds, model, batch = setup()
    strategy = STRATEGIES["unimodal"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), modality="vision")
    before = {m: [p.clone() for p in e.parameters()] for m, e in model.encoders.items()}
    strategy.train_step(batch)
    for m, ps in before.items():
        moved = any(not torch.equal(a, b) for a, b in zip(ps, model.encoders[m].parameters()))
        assert moved == (m == "vision"), m
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        STRATEGIES["unimodal"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), modality="smell")
