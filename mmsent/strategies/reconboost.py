"""ReconBoost: modality-alternating boosting (Hua, Xu, Bao, Yang & Huang, "ReconBoost: Boosting Can
Achieve Modality Reconcilement", ICML 2024), for N modalities.

Reference followed: huacong/ReconBoost@14ab57a ``train.py``, ``train_MSA.py``, ``schedule.py`` and
``models/dynamic_net.py`` (shared ``docs/research/balancemm-methods.md`` §6).

Model [source] (``model.fusion=shared``): learner ``f_m(x) = H(phi_m(x^m))`` with ONE head H shared
by all modalities and applied to each modality separately; ensemble ``F = beta * sum_m f_m`` with a
learnable scalar beta (init 1). The prediction is ``F``.

Stages [source]: stage s updates modality m_s, taken cyclically in the data's modality order. A
stage is two phases, each starting with fresh optimizer state (the reference builds a new SGD):

1. learner update, ``learner_epochs`` epochs (E_1 = 4): only m_s's encoder and, through the
   sharing, H learn. With ``p = softmax(f_{m_s}(x_i))`` and ``q = softmax(beta sum_{j != m_s} f_j(x_i))``
   (no gradient), ``l_i = -(w_1 - w_2 q[y_i]) log p[y_i] / C`` and the loss is the batch mean.
   The factor ``w_1 - w_2 q[y] >= w_1 - w_2 > 0`` keeps it a bounded, re-weighted cross-entropy
   that up-weights samples the other learners get wrong (it equals ``(w_1/C)[CE(y, p) -
   (w_2/w_1) KL((y*q) || p)]`` up to a constant: the reconcilement's target is the others'
   probability of the true class only; the full-distribution KL is unbounded and is not used).
   The reference's "memory consolidation" MSE has both operands detached and contributes nothing;
   it is omitted.
2. global rectification, ``rectify_epochs`` epochs (E_2 = 4): every encoder, H and beta on
   ``CE(y, F(x))``.

Defaults [source]: E_1 = E_2 = 4, (w_1, w_2) = (5, 1) (CREMA-D; MOSI/MOSEI/SIMS use (1, 0.25)).
Under torchrun every term is a batch mean: exact.

[extension] Regression (the source treats sentiment as classes): the learner's per-sample loss is
``(w_1 - w_2 c_i) |f_{m_s}(x_i) - y_i|``, with ``c_i = exp(-|beta sum_{j != m_s} f_j(x_i) - y_i|)``
the others' closeness to the label in place of ``q[y_i]`` (C = 1): the same bounded re-weighting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmsent.checks import check, finite
from mmsent.models.fusions import SharedHead
from mmsent.strategies.base import Strategy


def learner_weights(task, others, y, w1: float, w2: float):
    """``w_1 - w_2 q[y]`` per sample (q: the others' ensemble's probability of the truth, or its
    closeness to the label for regression)."""
    return w1 - w2 * task.score(others, y)


@dataclass(frozen=True)
class ReconBoostSettings:
    w1: float = 5.0  # the learner loss's weight
    w2: float = 1.0  # the reconcilement's weight on the others' probability of the truth (< w1)
    learner_epochs: int = 4  # E_1: epochs of one modality's learner update
    rectify_epochs: int = 4  # E_2: epochs of global rectification after it

    def __post_init__(self):
        check("w1", finite(self.w1) and self.w1 > 0, self.w1, "a finite number > 0")
        check("w2", finite(self.w2) and 0 <= self.w2 < self.w1, self.w2, "a number in [0, w1)")
        check("learner_epochs", self.learner_epochs >= 1, self.learner_epochs, "an integer >= 1")
        check("rectify_epochs", self.rectify_epochs >= 0, self.rectify_epochs, "an integer >= 0")


class ReconBoost(Strategy):
    label = "ReconBoost"  # its row in `cli.py table`
    method = "ReconBoost (ICML 2024), official code; needs `model.fusion=shared`"
    summary = "learners β·H(f_m) with one shared head; stages of 4 learner epochs (loss mean_i (w₁ − w₂ q_i[y]) CE_i / C) then 4 rectification epochs, fresh optimizer state per phase"
    checked = "`test_reconboost_per_sample_weight_and_loss_oracle`, the phase, schedule and rectification tests"
    resume_test = {"learner_epochs": 2, "rectify_epochs": 1}  # its state matters within a few epochs
    dist_test = {"learner_epochs": 1, "rectify_epochs": 1}  # its between-epoch machinery acts within two epochs
    Settings = ReconBoostSettings
    needs_model = {"fusion": "shared"}

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        if not isinstance(model.head, SharedHead):
            raise ValueError("reconboost needs one classifier shared by the modalities and an ensemble scale "
                             "(set model.fusion=shared)")
        self.order = list(model.head.modalities)

    @property
    def stage_length(self) -> int:
        return self.settings.learner_epochs + self.settings.rectify_epochs

    @property
    def learner(self) -> str:
        return self.order[(self.epoch // self.stage_length) % len(self.order)]

    @property
    def rectifying(self) -> bool:
        return self.epoch % self.stage_length >= self.settings.learner_epochs

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        phase = epoch % self.stage_length
        if phase in (0, self.settings.learner_epochs):  # a phase begins: a new optimizer, as the reference
            self.optimizer.state.clear()

    def train_step(self, batch):
        s, head = self.settings, self.model.head
        if self.rectifying:
            loss = self.task.loss(self.model.head(self.model.encode(batch)), batch.y)
            self.update(loss)
            return {"loss": loss.item(), "rectify": 1.0}
        m = self.learner
        others = [k for k in self.order if k != m]
        with torch.no_grad():  # the other learners are fixed in this phase
            fixed = head.branch_logits(self.model.mask_modalities(self.model.encode(batch, others), others))
            ensemble = head.beta * sum(fixed[k] for k in others)
        f_m = head.branch_logits(self.model.mask_modalities(self.model.encode(batch, [m]), [m]))[m]
        weight = learner_weights(self.task, ensemble, batch.y, s.w1, s.w2)
        per = self.task.per_sample(f_m, batch.y)
        classes = self.task.out_dim
        loss = (weight * per).mean() / classes
        # beta takes no part in this phase: its gradient is None and the optimizer skips it
        self.update(loss)
        return {"loss": loss.item(), "stage": float(self.order.index(m))}
