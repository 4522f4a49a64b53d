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


# --- the Task protocol: a task of a test's own, on a dataset of a test's own, through the CLI -----


class Hinge:
    """A task no module of mmsent knows: binary labels (0/1) predicted by one score, hinge loss."""

    from mmsent.tasks import Task as _Task

    class Task(_Task):
        name = "hinge"
        headline = "hit"
        metric_names = ("hit", "margin")
        percent = ("hit",)
        shown = ("hit", "margin")
        titles = {"hit": "hit rate (%)"}
        continuous = True  # one score per sample

        def __init__(self, num_classes: int = 1, class_weights=None):
            super().__init__(1)

        @staticmethod
        def signed(pred, y):
            return pred.reshape(-1) * (2 * y.to(pred.dtype) - 1)

        def loss(self, pred, y):
            return torch.relu(1 - self.signed(pred, y)).mean()

        def per_sample(self, pred, y):
            return torch.relu(1 - self.signed(pred, y))

        def metrics(self, pred, y):
            s = self.signed(pred.float(), y)
            return {"hit": float((s > 0).float().mean()), "margin": float(s.mean())}


def load_toy(cfg, seed: int = 0):
    """Two-class synthetic features relabelled as the hinge task's 0/1 targets."""
    import dataclasses

    from mmsent.data import make_synthetic

    ds = make_synthetic(n_train=96, n_val=48, n_test=48, task="classification", num_classes=2, seed=seed)
    return dataclasses.replace(ds, task="hinge", num_classes=1)


@pytest.fixture
def toy(monkeypatch):
    from dataclasses import dataclass

    from mmsent.data import DATASETS, DatasetSpec
    from mmsent.tasks import TASKS

    @dataclass(frozen=True)
    class ToySettings:
        pass

    monkeypatch.setitem(TASKS, "hinge", Hinge.Task)
    monkeypatch.setitem(DATASETS, "toy", DatasetSpec(load_toy, ToySettings))


def test_a_task_registered_in_a_test_trains_reports_and_predicts_through_the_cli(toy, tmp_path, capsys):
    """Nothing generic compares a task's name: a hinge task and a dataset using it, registered here
    (one line each), train with vanilla fusion and with DGL, select on the task's own metric, report
    its columns and predict its score column -- and the numbers are the task's (the hit rate of the
    written predictions recomputed by hand equals results.json's)."""
    import csv
    import json

    from mmsent import cli

    for strategy in ("vanilla", "dgl"):
        run = tmp_path / strategy
        assert cli.main(["train", "--dataset", "toy", "--strategy", strategy, "--epochs", "3", "--quiet",
                         "--out", str(run), "train.select=hit"]) == 0
        res = json.loads((run / "results.json").read_text())
        assert res["task"] == "hinge" and set(res["test"]["multi"]) == {"loss", "hit", "margin"}
        assert res["probe"] and all("test" in p and "hit" in p["test"] for p in res["probe"].values())
        rows = list(csv.DictReader((run / "test_predictions.csv").open()))
        hits = [(float(r["multi"]) > 0) == (int(float(r["label"])) == 1) for r in rows]
        assert sum(hits) / len(hits) == pytest.approx(res["test"]["multi"]["hit"])
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "vanilla"), str(tmp_path / "dgl")]) == 0
    out = capsys.readouterr().out
    hit = [json.loads((tmp_path / s / "results.json").read_text())["test"]["multi"]["hit"] for s in ("vanilla", "dgl")]
    assert "margin" in out and f"{100 * sum(hit) / 2:.2f} ±" in out, out  # its percent metric in percent
    assert cli.main(["predict", "--run", str(tmp_path / "dgl"), "--out", str(tmp_path / "p.csv")]) == 0
    assert "as results.json scored it" in capsys.readouterr().out


def test_no_generic_module_names_a_task():
    """The loop, evaluation, probes, predictions, reports and tables ask a task what it declares:
    none of them holds a task's name as a value (it would be a comparison by name)."""
    import ast
    import importlib
    import inspect

    from mmsent.tasks import TASKS

    for name in ("train", "loop", "probe", "cli", "table", "report", "predictions", "predict", "sweep.report",
                 "sweep.runner", "plots"):
        tree = ast.parse(inspect.getsource(importlib.import_module(f"mmsent.{name}")))
        named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in TASKS}
        assert not named, f"mmsent.{name} names the task(s) {named}"
