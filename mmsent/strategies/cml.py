"""CML: Calibrating Multimodal Learning (Ma, Zhang, Zhang, Wu, Fu, Zhou & Hu, ICML 2023), for N modalities.

The paper's principle: a model's confidence must not rise when a modality is removed. With
``x^(-m)`` the input without modality m (here: its features zeroed, the one masking rule of mmsent)
the regulariser penalises every violation by its size,

    L_CML = mean_i sum_m max(0, Conf(x_i^(-m)) - Conf(x_i)),
    L     = L_task(x) + lambda * L_CML,

and gradients flow through both confidences (the full prediction is pushed up, the reduced one
down). ``Conf`` is the maximum softmax probability for classification, as in the paper. Regression
has no predictive distribution; the confidence in the truth ``exp(-|pred - y|)`` (``task.score``,
the stand-in every classification-born baseline here uses) takes its place, so the rule reads
"dropping a modality must not bring the prediction closer to the label".

N modalities: the sum runs over the N single-modality removals. At N = 2 these are the two
unimodal branches, the paper's two-modality case.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmsent.config import check, finite
from mmsent.strategies.base import Strategy


def confidence(task, pred: Tensor, y: Tensor) -> Tensor:
    """Per-sample confidence: max softmax probability (classification), ``exp(-|err|)`` (regression)."""
    if task.name == "classification":
        return pred.softmax(-1).max(-1).values
    return task.score(pred, y)


def cml_penalty(full: Tensor, reduced: dict[str, Tensor]) -> Tensor:
    """``mean_i sum_m relu(reduced_m[i] - full[i])`` from per-sample confidences."""
    return sum(torch.relu(c - full) for c in reduced.values()).mean()


@dataclass(frozen=True)
class CMLSettings:
    lam: float = 1.0  # lambda: weight of the calibration regulariser

    def __post_init__(self):
        check("lam", finite(self.lam) and self.lam >= 0, self.lam, "a finite number >= 0")


class CML(Strategy):
    Settings = CMLSettings

    def train_step(self, batch):
        feats = self.model.encode(batch)
        pred = self.model.head(feats)
        task_loss = self.task.loss(pred, batch.y)
        full = confidence(self.task, pred, batch.y)
        # removals go through head_masked: a zero-masked pass must not move BatchNorm statistics
        reduced = {m: confidence(self.task, self.model.head_masked(
            self.model.mask_modalities(feats, [k for k in feats if k != m])), batch.y) for m in feats}
        penalty = cml_penalty(full, reduced)
        self.update(task_loss + self.settings.lam * penalty)
        return {"loss": task_loss.item(), "cml": penalty.item()}
