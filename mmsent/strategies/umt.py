"""UMT: Uni-Modal Teacher (Du, Teng, Wang, Li, Qu, Zhao et al., "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning", ICML 2023), for N modalities.

Reference followed: BalanceBenchmark@4c1482f ``trainer/UMT_trainer.py`` and
``configs/trainer_config.yaml`` (no official code; shared ``docs/research/balancemm-methods.md``
§10): lambda = 10 [source], one teacher and one MSE term per modality [source]; the teacher is the
validation-best epoch (BalanceBenchmark takes the newest; the spec prefers validation) and its
classifier during stage 1 is the shared head with the other modalities zeroed [mmsent's choice:
a unimodal model of the same architecture]. BalanceBenchmark's 0-80 epoch window is longer than
every run here, so distillation is always on.

The paper's diagnosis: joint training under-learns each modality's own features ("modality
laziness"); features learned by a unimodal model are better. UMT therefore works in two stages:

1. one unimodal model per modality (its encoder and the shared head's architecture, the other
   modalities zeroed) is trained on the training split; mmsent keeps, per modality, the epoch
   with the lowest validation loss of that branch (validation-only selection) and freezes it;
2. the multimodal model trains on its task loss plus a feature-distillation term that pulls each
   encoder's output towards its frozen teacher's on the same input:

       L = L_task(h(phi_1(x_1), ..., phi_N(x_N)), y) + lambda * sum_m MSE(phi_m(x_m), phi_m^T(x_m)).

N modalities: one teacher and one distillation term per modality (the paper's two-modality loss
summed over m). Stage 1 runs inside the first ``on_epoch_start`` (``teacher_epochs`` epochs per
modality, the run's own optimizer type and settings, the run's batch size), so one ``cli.py train``
is the whole method; its cost is therefore up to N * teacher_epochs extra unimodal epochs. The
teachers start from a copy of the multimodal model's initial weights. Feature maps (audio-visual
ResNets) are average-pooled to their channels before the MSE (``feature_vectors``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmsent.checks import check, finite
from mmsent.models.model import evaluating
from mmsent.strategies.base import OneModality, Strategy, feature_vectors


@dataclass(frozen=True)
class UMTSettings:
    lam: float = 10.0  # lambda: weight of the feature-distillation term (BalanceBenchmark's "scaling": 10)
    teacher_epochs: int = 10  # stage 1: epochs per unimodal teacher (best validation epoch kept)

    def __post_init__(self):
        check("lam", finite(self.lam) and self.lam >= 0, self.lam, "a finite number >= 0")
        check("teacher_epochs", self.teacher_epochs >= 1, self.teacher_epochs, "an integer >= 1")


def distillation(student: dict, teacher: dict) -> torch.Tensor:
    """``sum_m mean((phi_m - phi_m^T)^2)`` over pooled feature vectors."""
    return sum(F.mse_loss(feature_vectors(student[m]), feature_vectors(teacher[m])) for m in teacher)


class UMT(Strategy):
    label = "UMT"  # its row in `cli.py table`
    method = "UMT (ICML 2023), BalanceBenchmark's"
    summary = "N unimodal teachers (validation-selected), L + 10 Σ_m MSE(φ_m, φ_m^T)"
    checked = "`test_golden.py::test_umt_equals_the_reference`, `test_umt_teachers_are_trained_frozen_and_pull_the_encoders`"
    short_run = {"teacher_epochs": 2}  # its between-epoch work happens within two epochs
    Settings = UMTSettings
    counts = ("teachers",)

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.lam, self.teacher_epochs = self.settings.lam, self.settings.teacher_epochs
        self.teachers: dict[str, torch.nn.Module] = {}

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        if not self.teachers:
            self.teachers = {m: self._train_teacher(m, data) for m in self.model.modalities}
            self.act("teachers", len(self.teachers))

    def _train_teacher(self, m: str, data) -> torch.nn.Module:
        """Stage 1 for modality m: its unimodal model, the lowest-validation-loss epoch kept."""
        uni = copy.deepcopy(self.model)
        # the unimodal-only strategy's own step (and its all-reduce under torchrun) trains the teacher
        trainer = OneModality(uni, self.copy_optimizer(uni), self.task,
                              grad_clip=self.grad_clip, modality=m, **self.loop())
        best: dict = {"loss": math.inf, "weights": None}

        def keep_if_best(_):
            with evaluating(uni):  # the teacher's own prediction is its modality alone
                preds = [trainer.predict(b.to(self.device)) for b in data.val.batches(self.batch_size, deferred=True)]
                val_loss = float(self.task.loss(torch.cat(preds), data.val.y.to(self.device)))
            if val_loss < best["loss"]:
                best.update(loss=val_loss, weights=copy.deepcopy(uni.encoders[m].state_dict()))

        self.train_copy(trainer, data, self.teacher_epochs, keep_if_best)
        teacher = copy.deepcopy(self.model.encoders[m])
        teacher.load_state_dict(best["weights"])
        return teacher.eval().requires_grad_(False)

    def train_step(self, batch):
        feats = self.model.encode(batch)
        task_loss = self.task.loss(self.model.head(feats), batch.y)
        with torch.no_grad():
            target = {m: t(batch.x[m], batch.mask[m]) for m, t in self.teachers.items()}
        distill = distillation(feats, target)
        self.update(task_loss + self.lam * distill)
        return {"loss": task_loss.item(), "distill": distill.item()}

    def state_dict(self):
        return {**super().state_dict(), "teachers": {m: t.state_dict() for m, t in self.teachers.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.teachers = {}
        for m, weights in state["teachers"].items():
            teacher = copy.deepcopy(self.model.encoders[m])
            teacher.load_state_dict(weights)
            self.teachers[m] = teacher.eval().requires_grad_(False)
