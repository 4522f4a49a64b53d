"""Tasks: the loss, a per-sample score, and the metrics for regression (MOSI) and classification.

MOSI metrics follow MMSA's ``metricsTop.__eval_mosei_regression`` exactly:

* ``acc2_has0`` / ``f1_has0``: negative (y < 0) vs non-negative (y >= 0) over all samples;
* ``acc2_non0`` / ``f1_non0``: samples with y == 0 dropped, then y > 0 vs y <= 0;
* F1 is sklearn's weighted F1 with the truth as first argument;
* ``acc7`` / ``acc5``: clip to [-3, 3] / [-2, 2], then ``np.round`` (half to even) on both sides;
* ``mae``; ``corr`` is Pearson's r (NaN for a constant prediction).

Segmentation (dense prediction, the DGL paper's Table 5) counts every pixel of a split in one
confusion matrix, so the metrics are exact over the whole split, not means of per-image values:

* labels are class ids 0..K-1 per pixel, ``VOID`` (-1) for unlabelled pixels, which count nowhere;
* ``miou``: the mean over classes of IoU_c = TP_c / (TP_c + FP_c + FN_c), over the classes present
  in the ground truth (a class absent from it is left out of the mean, as is standard);
* ``pixel_acc``: correct labelled pixels / labelled pixels; ``mean_acc``: the mean over present
  classes of their recall.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REGRESSION_METRICS = ("mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7")
CLASSIFICATION_METRICS = ("acc", "f1")
SEGMENTATION_METRICS = ("miou", "pixel_acc", "mean_acc")
VOID = -1  # the label of an unlabelled pixel (NYUv2's class 0)


class Task:
    """What a kind of prediction is to the generic code (loop, evaluation, probes, predictions,
    tables): the loss and the metrics, and the abilities it declares -- never its name. A new task
    is a subclass plus one line in ``TASKS``; a dataset names it (``Dataset.task``).

    Subclasses give ``loss``, ``per_sample``, ``metrics`` and ``batch_weight``; class-based methods
    also use ``correct``, ``score`` and ``classes``."""

    name = ""
    headline = ""  # the metric a one-line summary shows
    metric_names: tuple[str, ...] = ()  # what ``metrics`` returns (evaluation adds ``loss``)
    lower_better: tuple[str, ...] = ()  # its metrics where lower is better (``loss`` always is)
    percent: tuple[str, ...] = ()  # its metrics that are fractions, shown in percent
    shown: tuple[str, ...] = ()  # what a run's or a trial's summary line shows, in order
    titles: dict[str, str] = {}  # a table's title for a metric (default: its name)
    probe_select = ""  # the validation metric a linear probe's regularisation is chosen on (default: headline)
    # The output is one real score per sample (a table's column), not class logits.
    continuous = False
    # A split is scored from per-batch sums (``summary``/``from_summary``) instead of held outputs
    # (segmentation: a split's logits would not fit in memory).
    summed = False
    # Predictions are one row per sample (a predictions table, paired per-sample significance
    # tests, per-sample logits for the balancing methods); False for per-pixel maps, on which only
    # strategies marked ``dense_ok`` are defined and probes are per pixel.
    tabular = True

    def __init__(self, num_classes: int = 1, class_weights: Tensor | None = None):
        self.out_dim = num_classes

    @property
    def num_classes(self) -> int:
        return self.out_dim

    @staticmethod
    def batch_weight(y: Tensor) -> float:
        """What ``loss`` divides by: the number of samples (torchrun weighs shards by it)."""
        return float(len(y))

    def diagnose(self, pred: Tensor) -> dict[str, float]:
        """What a task adds to the per-epoch diagnostics of a pass's outputs (``train.grad_probe``)."""
        return {}


def metric_names(task: str) -> tuple[str, ...]:
    """What ``metrics`` returns for the task named ``task`` (``loss`` is added by evaluation)."""
    return TASKS[task].metric_names


def msa_regression_metrics(pred, true) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    out = {"mae": float(np.mean(np.abs(pred - true)))}
    if pred.std() > 0 and true.std() > 0:
        out["corr"] = float(np.corrcoef(pred, true)[0, 1])
    else:
        out["corr"] = float("nan")
    for k, lim in (("acc7", 3.0), ("acc5", 2.0)):
        out[k] = float(np.mean(np.round(np.clip(pred, -lim, lim)) == np.round(np.clip(true, -lim, lim))))
    from sklearn.metrics import accuracy_score, f1_score  # here: a second of import for every command

    bt, bp = true >= 0, pred >= 0
    out["acc2_has0"] = float(accuracy_score(bt, bp))
    out["f1_has0"] = float(f1_score(bt, bp, average="weighted"))
    nz = true != 0
    if nz.any():
        bt, bp = true[nz] > 0, pred[nz] > 0
        out["acc2_non0"] = float(accuracy_score(bt, bp))
        out["f1_non0"] = float(f1_score(bt, bp, average="weighted"))
    else:
        out["acc2_non0"] = out["f1_non0"] = float("nan")
    return out


def classification_metrics(logits, true) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(logits).argmax(-1)
    true = np.asarray(true).reshape(-1)
    return {"acc": float(accuracy_score(true, pred)), "f1": float(f1_score(true, pred, average="weighted"))}


class Regression(Task):
    """Sentiment regression (MOSI): L1 loss as in CubeMLP/MMSA; the head outputs (B, 1)."""

    name = "regression"
    headline = "acc2_has0"
    metric_names = REGRESSION_METRICS
    lower_better = ("mae",)
    percent = ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7")
    shown = ("mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "acc7")
    titles = {"acc2_has0": "Acc-2 (has0, %)"}
    probe_select = "mae"
    continuous = True

    def __init__(self, num_classes: int = 1, class_weights: Tensor | None = None):
        super().__init__(1)

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.l1_loss(pred.reshape(-1), y.to(pred.dtype))

    def per_sample(self, pred: Tensor, y: Tensor) -> Tensor:
        """The loss of each sample, (B,): ``loss`` is its mean."""
        return (pred.reshape(-1) - y.to(pred.dtype)).abs()

    def correct(self, pred: Tensor, y: Tensor) -> Tensor:
        """Per-sample hit, (B,) bool: the prediction has the label's Acc-2 class (``classes``), the
        "is it right" that classification-born methods (valuation, CML, MBSD) need."""
        return self.classes(pred.reshape(-1)) == self.classes(y)

    def score(self, pred: Tensor, y: Tensor) -> Tensor:
        """Per-sample confidence in the truth, in (0, 1]: ``exp(-|pred - y|)``. It stands in for the
        softmax probability of the true class that classification-born baselines (OGM-GE) sum into
        a modality's score: 1 for a perfect prediction, falling with the error, always positive so
        that ratios of scores are defined."""
        return torch.exp(-(pred.reshape(-1) - y).abs())

    def classes(self, y: Tensor) -> Tensor:
        """Discrete labels for class-based baselines (PMR prototypes, D&R purity): MOSI's binary
        has0 split, negative (y < 0) vs non-negative."""
        return (y >= 0).long()

    @property
    def num_classes(self) -> int:  # the Acc-2 classes of ``classes``
        return 2

    def metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        return msa_regression_metrics(pred.reshape(-1).cpu().numpy(), y.cpu().numpy())


class Classification(Task):
    """Single-label classification with cross-entropy."""

    name = "classification"
    headline = "acc"
    metric_names = CLASSIFICATION_METRICS
    percent = shown = CLASSIFICATION_METRICS
    titles = {"acc": "accuracy (%)"}

    def __init__(self, num_classes: int, class_weights: Tensor | None = None):
        if num_classes < 2:
            raise ValueError(f"classification needs num_classes >= 2, got {num_classes}")
        super().__init__(num_classes)

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(pred, y.long())

    def per_sample(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(pred, y.long(), reduction="none")

    def correct(self, pred: Tensor, y: Tensor) -> Tensor:
        return pred.argmax(-1) == y.long()

    def score(self, pred: Tensor, y: Tensor) -> Tensor:
        return pred.softmax(-1).gather(1, y.long()[:, None]).squeeze(1)

    def classes(self, y: Tensor) -> Tensor:
        return y.long()

    def metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        return classification_metrics(pred.cpu().numpy(), y.cpu().numpy())

    def diagnose(self, pred: Tensor) -> dict[str, float]:
        return {"top_prob": float(pred.softmax(-1).max(-1).values.mean())}


def confusion(pred: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """The (K, K) confusion matrix of per-pixel labels, rows the truth and columns the prediction;
    void pixels (``y == VOID``) are left out. ``pred`` and ``y`` hold class ids of any equal shape."""
    keep = y != VOID
    t, p = y[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(cm: Tensor) -> dict[str, float]:
    """mIoU, pixel accuracy and mean class accuracy of a confusion matrix (classes absent from the
    ground truth left out of both means)."""
    cm = cm.double()
    tp, truth, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    present = truth > 0
    iou = tp[present] / (truth[present] + predicted[present] - tp[present])
    total = float(truth.sum())
    return {"miou": float(iou.mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total else float("nan"),
            "mean_acc": float((tp[present] / truth[present]).mean()) if present.any() else float("nan")}


def class_iou(cm: Tensor) -> list[float]:
    """IoU of every class (nan for a class neither in the truth nor predicted)."""
    cm = cm.double()
    union = cm.sum(1) + cm.sum(0) - cm.diag()
    return [float(i) if u > 0 else float("nan") for i, u in zip(cm.diag() / union.clamp(min=1), union)]


def median_frequency_weights(labels: Tensor, num_classes: int) -> Tensor:
    """SegNet's median frequency balancing: freq_c = pixels of class c / pixels of the images in
    which c appears, w_c = median(freq) / freq_c (a class never seen gets weight 0)."""
    pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for image in labels:
        counts = torch.bincount(image[image != VOID].long().reshape(-1), minlength=num_classes).double()
        pixels += counts
        image_pixels += (counts > 0).double() * float((image != VOID).sum())
    seen = image_pixels > 0
    freq = torch.where(seen, pixels / image_pixels.clamp(min=1), torch.zeros_like(pixels))
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[seen] = freq[seen].median() / freq[seen]
    return weights.float()


class Segmentation(Task):
    """Per-pixel classification: the head outputs (B, K, H, W) logits, labels are (B, H, W) class
    ids with ``VOID`` for unlabelled pixels. Cross-entropy over the labelled pixels, optionally
    weighted per class (``median_frequency_weights``)."""

    name = "segmentation"
    headline = "miou"
    metric_names = percent = SEGMENTATION_METRICS
    shown = ("loss", *SEGMENTATION_METRICS)
    titles = {"miou": "mIoU (%)"}
    summed = True
    tabular = False

    def __init__(self, num_classes: int, class_weights: Tensor | None = None):
        if num_classes < 2:
            raise ValueError(f"segmentation needs num_classes >= 2, got {num_classes}")
        super().__init__(num_classes)
        self.class_weights = class_weights

    def _weights(self, pred: Tensor):
        return None if self.class_weights is None else self.class_weights.to(pred.device, pred.dtype)

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(pred, y.long(), weight=self._weights(pred), ignore_index=VOID)

    def batch_weight(self, y: Tensor) -> float:
        """What ``loss`` divides by: the labelled pixels, each counted with its class weight
        (torchrun weighs a shard by its share, so that K shard means add up to the batch's)."""
        labelled = y[y != VOID].long()
        return float(self.class_weights.double()[labelled.cpu()].sum()) if self.class_weights is not None else float(labelled.numel())

    def per_sample(self, pred: Tensor, y: Tensor) -> Tensor:
        """Each image's mean cross-entropy over its labelled pixels, (B,)."""
        pixel = F.cross_entropy(pred, y.long(), weight=self._weights(pred), ignore_index=VOID, reduction="none")
        labelled = (y != VOID).flatten(1).sum(1).clamp(min=1)
        return pixel.flatten(1).sum(1) / labelled

    def metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        return segmentation_metrics(confusion(pred.argmax(1), y, self.num_classes))

    def summary(self, pred: Tensor, y: Tensor) -> Tensor:
        """What a split's loss and metrics are sums of, for one batch, as one float64 row: the
        (weighted) cross-entropy summed over labelled pixels, the sum of their weights, and the
        confusion counts. Summed over batches these give the split's exact loss and metrics
        (``from_summary``) without holding its logits (NYUv2's 654 test frames at 480 x 640 x 40
        classes would be 32 GB of them)."""
        pred = pred if pred.dtype == torch.float64 else pred.float()  # bfloat16 under autocast: sum in float32
        total = F.cross_entropy(pred, y.long(), weight=self._weights(pred), ignore_index=VOID, reduction="sum")
        weight = torch.tensor([self.batch_weight(y)], dtype=torch.float64)
        cm = confusion(pred.argmax(1), y, self.num_classes)
        return torch.cat([total.double().cpu()[None], weight, cm.double().flatten().cpu()])

    def from_summary(self, summary: Tensor) -> dict[str, float]:
        """The loss and metrics of a split from its batches' ``summary`` rows, summed."""
        total, weight, cm = summary[0], summary[1], summary[2:].view(self.num_classes, self.num_classes)
        return {"loss": float(total / weight) if weight > 0 else float("nan"), **segmentation_metrics(cm)}


# One line per task; ``Dataset.task`` names one of these.
TASKS: dict[str, type[Task]] = {
    "regression": Regression,
    "classification": Classification,
    "segmentation": Segmentation,
}


def build_task(task: str, num_classes: int = 1, class_weights: Tensor | None = None) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(sorted(TASKS))}")
    return TASKS[task](num_classes, class_weights)


def task_of(metrics: dict) -> type[Task] | None:
    """The task whose headline metric a mapping of metrics holds (a trial's or an old run's scores,
    which do not name their task); None when none does."""
    return next((t for t in TASKS.values() if t.headline in metrics), None)


def shown_metrics(metrics: dict) -> list[str]:
    """The metrics of ``metrics`` a summary shows: its task's ``shown``, else all of them."""
    task = task_of(metrics)
    return [m for m in task.shown if m in metrics] if task else list(metrics)


def percent(metric: str) -> bool:
    """Whether a metric is a fraction shown in percent (accuracies, F1, IoU), by what the tasks declare."""
    return any(metric in t.percent for t in TASKS.values())


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (the loss, and what a task declares)."""
    return metric == "loss" or any(metric in t.lower_better for t in TASKS.values())
