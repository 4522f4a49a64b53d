"""mmsent/evaluate.py: what validation and test score for every registered strategy, the full model
("multi") and each modality branch through the masked head, in eval mode."""
import pytest
import torch

from mmsent.dgl import zero_others
from mmsent.evaluate import branch_predictions
from mmsent.strategies import STRATEGIES, Strategy
from mmsent.tasks import Regression
from test_strategies import setup


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_branch_prediction_is_the_head_on_its_masked_input(name):
    """What validation/test report per modality must be the shared head with the OTHER modalities
    zeroed (built here by hand), not the full model, and "multi" the full model. A strategy that
    defines its own test-time prediction (``predict``: MMCosine's cosine classifier, MLA's and
    ReconBoost's ensembles, a unimodal-only model's branch) is scored by it: then the oracle is its
    ``predict`` on the whole split at once (what it computes is its own test file's oracle), and
    this checks the scoring around it: eval mode, batches of 3, order, every branch."""
    cls = STRATEGIES[name]
    ds, model, batch = setup(**cls.needs_model)
    strategy = cls(model, torch.optim.SGD(model.parameters(), lr=0.1), Regression(), **cls.short_run)
    strategy.on_epoch_start(0, ds)
    strategy.train_step(batch)
    preds = branch_predictions(strategy, ds.test, batch_size=3)
    assert model.training  # scoring leaves the model as it found it
    model.eval()
    own = cls.predict is not Strategy.predict
    with torch.no_grad():
        whole = ds.test.batch(torch.arange(len(ds.test)))
        feats = model.encode(whole)
        for m in feats:
            want = strategy.predict(whole, [m]) if own else model.head(zero_others(feats, m))
            torch.testing.assert_close(preds[m], want, rtol=1e-6, atol=1e-6)
        want = strategy.predict(whole) if own else model.head(feats)
        torch.testing.assert_close(preds["multi"], want, rtol=1e-6, atol=1e-6)
