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


def test_segmentation_metrics_on_hand_made_label_maps():
    """Two 2x3 maps, classes 0..3, -1 void. Truth / prediction (row-major):
    image 1: truth 0 0 1 | 1 2 -1   pred 0 1 1 | 1 2 0
    image 2: truth 2 2 0 | -1 -1 1  pred 2 0 0 | 3 3 1
    Labelled pixels 9, correct 7 (the void pixels' predictions count nowhere); the IoUs are worked
    below; class 3 is never in the truth, so it is left out of the means."""
    from mmsent.tasks import Segmentation, class_iou, confusion, segmentation_metrics

    truth = torch.tensor([[[0, 0, 1], [1, 2, -1]], [[2, 2, 0], [-1, -1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[2, 0, 0], [3, 3, 1]]])
    cm = confusion(pred, truth, 4)
    # by hand: class 0 truth at (1,0,0),(1,0,1),(2,0,2) -> predicted 0, 1, 0: TP 2, FN 1; predicted 0
    # elsewhere on labelled pixels: (2,0,1) (truth 2) -> FP 1. IoU_0 = 2 / (2 + 1 + 1) = 0.5
    # class 1: truth (1,0,2),(1,1,0),(2,1,2) all predicted 1: TP 3; FP (1,0,1): IoU_1 = 3 / 4
    # class 2: truth (1,1,1),(2,0,0),(2,0,1): predicted 2, 2, 0: TP 2, FN 1, FP 0: IoU_2 = 2 / 3
    assert cm.tolist() == [[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    got = segmentation_metrics(cm)
    assert got["miou"] == pytest.approx((0.5 + 0.75 + 2 / 3) / 3)
    assert got["pixel_acc"] == pytest.approx(7 / 9)
    assert got["mean_acc"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert class_iou(cm)[:3] == pytest.approx([0.5, 0.75, 2 / 3]) and math.isnan(class_iou(cm)[3])
    # the task scores logits the same way, over the whole split at once
    logits = torch.nn.functional.one_hot(pred.clamp(min=0), 4).permute(0, 3, 1, 2).double()
    assert Segmentation(4).metrics(logits, truth) == got


def test_segmentation_loss_ignores_void_and_weights_by_median_frequency():
    from mmsent.tasks import Segmentation, median_frequency_weights

    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = torch.randint(-1, 3, (2, 4, 5))
    keep = y != -1
    want = -torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[keep].gather(1, y[keep][:, None]).mean()
    assert Segmentation(3).loss(logits, y) == pytest.approx(float(want))
    per = Segmentation(3).per_sample(logits, y)
    assert per.shape == (2,) and float((per * keep.flatten(1).sum(1)).sum() / keep.sum()) == pytest.approx(float(want))
    # median frequency (SegNet): class 0 in both images (4 + 2 of 12 labelled px), class 1 only in the
    # first (2 of 6), class 2 only in the second (4 of 6): freq 0.5, 1/3, 2/3; median 0.5
    labels = torch.tensor([[[0, 0, 0, 0, 1, 1]], [[0, 0, 2, 2, 2, 2]]])
    w = median_frequency_weights(labels, 4)
    assert w.tolist() == pytest.approx([1.0, 1.5, 0.75, 0.0])
