"""mmsent/evaluate.py: what validation and test score for every registered strategy, the full model
("multi") and each modality branch through the masked head, in eval mode."""
import pytest
import torch

from mmsent.dgl import zero_others
from mmsent.evaluate import branch_predictions
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Regression
from test_strategies import setup


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_branch_prediction_is_the_head_on_its_masked_input(name):
    """What validation/test report per modality must be the shared head with the OTHER modalities
    zeroed (built here by hand), not the full model; "multi" is the full model (MLA, ReconBoost: their fusion;
    a unimodal-only model: its own branch).
    MMCosine's head is its cosine classifier over the linear head's weight blocks."""
    ds, model, batch = setup(**STRATEGIES[name].needs_model)
    strategy = STRATEGIES[name](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), **STRATEGIES[name].short_run)
    strategy.on_epoch_start(0, ds)
    strategy.train_step(batch)
    preds = branch_predictions(strategy, ds.test, batch_size=3)
    model.eval()
    head = strategy.logits if name == "mmcosine" else model.head
    with torch.no_grad():
        feats = model.encode(ds.test.batch(torch.arange(len(ds.test))))
        for m in feats:
            masked = {k: f if k == m else torch.zeros_like(f) for k, f in feats.items()}
            torch.testing.assert_close(preds[m], head(masked), rtol=1e-6, atol=1e-6)
        # MLA averages the branches; ReconBoost's shared head is itself the ensemble beta * sum_m H(f_m)
        # over the learners added so far (before the first stage ends: the first learner alone)
        added = (strategy.added or [strategy.learner]) if name == "reconboost" else list(feats)
        multi = (sum(head(zero_others(feats, m)) for m in feats) / len(feats) if name == "mla"
                 else head(zero_others(feats, "audio")) if name == "unimodal"
                 else head({k: f if k in added else torch.zeros_like(f) for k, f in feats.items()}))
        torch.testing.assert_close(preds["multi"], multi, rtol=1e-6, atol=1e-6)


def test_a_unimodal_models_own_prediction_is_its_branch():
    """Validation selects on "multi": for a unimodal-only model that must be its modality alone
    (under MMTM the untrained encoders' maps gate the trained one; Audio-only was selected at random)."""
    ds, model, batch = setup()
    s = STRATEGIES["unimodal"](model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), modality="audio")
    s.train_step(batch)
    preds = branch_predictions(s, ds.test)
    torch.testing.assert_close(preds["multi"], preds["audio"], rtol=0, atol=0)
    assert not torch.allclose(preds["multi"], preds["vision"])
