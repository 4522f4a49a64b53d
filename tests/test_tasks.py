"""MOSI metrics (MMSA definitions) and classification metrics on hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from mmsent.tasks import Classification, Regression, classification_metrics, msa_regression_metrics

PRED = [-1.5, 0.0, 2.5, -0.4, 0.6, 3.7]
TRUE = [-2.0, 0.0, 2.0, 0.3, -0.2, 3.0]


def test_msa_metrics_hand_computed():
    m = msa_regression_metrics(PRED, TRUE)
    assert m["mae"] == pytest.approx(3.2 / 6)
    # has0: y >= 0 vs pred >= 0 -> rows 3 and 4 disagree
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # class True: P = R = 3/4; class False: P = R = 1/2; weighted by support 4 and 2
    assert m["f1_has0"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # non0: row 1 (y == 0) dropped; rows 3 and 4 disagree out of 5
    assert m["acc2_non0"] == pytest.approx(3 / 5)
    # acc7: 2.5 rounds half-to-even to 2 (== round(2.0)); -0.4 -> -0 == round(0.3) = 0; 0.6 -> 1 != -0
    assert m["acc7"] == pytest.approx(5 / 6)
    assert m["acc5"] == pytest.approx(5 / 6)
    p, t = np.array(PRED), np.array(TRUE)
    r = ((p - p.mean()) * (t - t.mean())).sum() / math.sqrt(((p - p.mean()) ** 2).sum() * ((t - t.mean()) ** 2).sum())
    assert m["corr"] == pytest.approx(r)


def test_non0_f1_and_zero_ties():
    # y == 0 counts as non-negative for has0 and is dropped for non0
    m = msa_regression_metrics([-0.1, 0.1, 0.2], [0.0, 0.0, -1.0])
    assert m["acc2_has0"] == pytest.approx(1 / 3)  # truth [T, T, F], pred [F, T, T]
    assert m["acc2_non0"] == 0.0  # only the last row remains, predicted positive
    assert m["f1_non0"] == 0.0


def test_out_of_range_predictions_are_clipped_for_acc7():
    m = msa_regression_metrics([5.0, -9.0], [3.0, -3.0])
    assert m["acc7"] == 1.0 and m["acc5"] == 1.0


def test_constant_prediction_has_nan_corr():
    assert math.isnan(msa_regression_metrics([1.0, 1.0, 1.0], [0.5, -1.0, 2.0])["corr"])


def test_classification_metrics():
    logits = np.array([[2.0, 0.1, 0], [0, 1, 0], [0, 0, 3], [1, 0, 0]])
    m = classification_metrics(logits, [0, 1, 1, 2])  # predicted 0, 1, 2, 0
    assert m["acc"] == pytest.approx(0.5)
    # class 0: P 1/2 R 1 F1 2/3 (support 1); class 1: P 1 R 1/2 F1 2/3 (support 2); class 2: 0 (support 1)
    assert m["f1"] == pytest.approx((2 / 3 + 2 * 2 / 3) / 4)


def test_task_losses_and_scores():
    reg = Regression()
    pred, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([0.5, 1.0])
    assert reg.loss(pred, y).item() == pytest.approx((0.5 + 2.0) / 2)
    assert reg.score(pred, y).tolist() == pytest.approx([math.exp(-0.5), math.exp(-2.0)])
    assert reg.classes(torch.tensor([-0.1, 0.0, 2.0])).tolist() == [0, 1, 1]
    cls = Classification(3)
    logits = torch.tensor([[0.0, math.log(3), 0.0]])
    assert cls.score(logits, torch.tensor([1])).item() == pytest.approx(0.6)
    with pytest.raises(ValueError):
        Classification(1)
