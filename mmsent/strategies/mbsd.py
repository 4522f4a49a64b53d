"""MBSD: modality-balancing self-distillation (Liu, Li, Song, Yang & Zeng, "Multimodal Pre-Training
with Self-Distillation for Product Understanding in E-Commerce", WSDM 2023), for N modalities.

The paper's diagnosis: in joint multimodal training one modality dominates and the others are not
fully tapped. Its remedy is *self*-distillation -- no separately trained teacher: the model's own
prediction from the dominant modality teaches the model's predictions from the weaker modalities,
so the knowledge the dominant modality has gathered is transferred to them. Per step:

    f_m   = h(x with every modality but m zeroed)    (modality m's branch through the shared head)
    s_m   = sum_i Conf_m(x_i)                        (the branch's confidence in the truth, OGM-GE's score)
    d     = argmax_m s_m                             (the dominant modality of this batch: the teacher)
    L_KD  = 1 / (N - 1) * sum_{m != d} mean_i T^2 KL(softmax(sg(f_d) / T) || softmax(f_m / T)),
    L     = L_task(h(x), y) + lambda * L_KD,

where ``sg`` stops the gradient: the teacher is not pulled towards its students. The students'
gradient reaches their encoders and the shared head through the masked passes (which leave the
head's BatchNorm statistics alone). Evaluation is the fused model's, unchanged.

Regression (not in the paper; MOSI): each branch predicts a Gaussian N(f_m, sigma^2), whose KL is
(f_m - f_d)^2 / (2 sigma^2); with the usual T^2 factor and sigma = T the temperature cancels, so
the term is ``mean_i (f_m - f_d)^2 / 2`` for every T. Confidence is ``exp(-|err|)`` (task.score), as
for every classification-born baseline here.

N modalities: the teacher is the one leader of the batch and all N - 1 others are its students,
averaged so that lambda means the same for every N; at N = 2 the weaker modality learns from the
stronger one, the paper's two-modality case. Works with every fusion head and both tasks. Under
torchrun the scores are sums over the global batch (``dist.sum``), so every rank picks the same
teacher and K ranks step exactly as one process.

Source note: only the paper's abstract was readable from this machine. Self-distillation from the
dominant modality to the weaker ones inside one model follows it; choosing the teacher per batch by
the branches' confidence, the temperature-scaled KL between the masked branches, averaging over the
students and the regression analogue are mmsent's reading (the paper's model is a single-stream
vision-language BERT pre-trained on e-commerce data; its other pre-training tasks are not part of
the balancing method and are not built).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mmsent.config import check, finite
from mmsent.strategies.base import Strategy


def self_distillation(task_name: str, teacher: Tensor, students: list[Tensor], tau: float) -> Tensor:
    """``L_KD``: the students' mean divergence from the (detached) teacher, batch-averaged."""
    teacher = teacher.detach()
    if task_name == "classification":
        target = (teacher / tau).log_softmax(-1)
        kl = [F.kl_div((f / tau).log_softmax(-1), target, reduction="batchmean", log_target=True) for f in students]
        return tau ** 2 * sum(kl) / len(students)
    return sum(0.5 * ((f - teacher) ** 2).mean() for f in students) / len(students)


@dataclass(frozen=True)
class MBSDSettings:
    lam: float = 1.0  # lambda: weight of the self-distillation term
    tau: float = 1.0  # T: distillation temperature (classification; it cancels for regression)

    def __post_init__(self):
        check("lam", finite(self.lam) and self.lam >= 0, self.lam, "a finite number >= 0")
        check("tau", finite(self.tau) and self.tau > 0, self.tau, "a finite number > 0")


class MBSD(Strategy):
    Settings = MBSDSettings

    def train_step(self, batch):
        feats = self.model.encode(batch)
        task_loss = self.task.loss(self.model.head(feats), batch.y)
        branches = self.branches(feats)
        scores = self.branch_scores(feats, batch.y, branches)
        teacher = max(scores, key=scores.get)  # ties: the first in modality order, on every rank
        kd = self_distillation(self.task.name, branches[teacher],
                               [f for m, f in branches.items() if m != teacher], self.settings.tau)
        self.update(task_loss + self.settings.lam * kd)
        # per modality, 1.0 when it taught: the epoch's mean is the share of batches it led
        return {"loss": task_loss.item(), "distill": kd.item(), **{f"teacher_{m}": float(m == teacher) for m in feats}}
