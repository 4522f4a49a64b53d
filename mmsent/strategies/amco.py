"""AMCo: Adaptive Mask Co-optimization (Zhou, Liang, Zheng, Xuan & Kumada, "Adaptive Mask
Co-Optimization for Modal Dependence in Multimodal Learning", ICASSP 2023), for N modalities.

Reference followed: BalanceBenchmark@4c1482f ``trainer/AMCo_trainer.py`` and
``BaseClassifierAMCoModel`` (no official code; shared ``docs/research/balancemm-methods.md`` §4, a
low-confidence reference whose constants are provisional).

Model [source] (``model.fusion=concat_mix``): per-modality logits of the linear late-fusion head
``z_m = W_m f_m + b/N`` and one C x C layer, ``o = L*(sum_m mu_m * z_m)``, mu_m a per-class mask
(all ones unless modality m is dependent).

Dependence [source]: after each step, per sample, one softmax over the N*C vector [z_1; ...; z_N];
``share_m`` = the batch mean of the mass on modality m's block. Modality m is dependent for the
next step iff ``share_m > sigma``; the flags reset at every epoch start. sigma = 0.5 at N = 2
[source]; ``1/N`` (the fair share) for N > 2 [extension] unless ``sigma`` is given.

Mask schedule [source]: a progress ``l`` reset to 0 at every epoch start; before each batch
``p = sin(pi/2 * min(eps, l) / eps)`` and ``K = floor(p * C)``; after it ``l += t / 10`` (t the
epoch). The batch's mask zeroes K random class positions, the same for every sample and every
dependent modality. (With eps = 0.3 epoch 0 never masks; from epoch t >= 1 the mask is complete
after ceil(3/t) batches.)

Loss [source, the co-optimisation]: ``L = CE(o, y) + sum_m CE(mu_m * z_m, y)`` in the modulation
epochs (0-80), ``L = CE(o, y)`` alone after them (no mask, the flags kept). The unimodal terms and
the dependence shares read the MASKED logits ``mu_m * z_m``: BalanceBenchmark's
``unimodality_calculate`` overwrites a dependent modality's unimodal result with the masked one
before the trainer computes both, so under a full mask that modality's unimodal term gives its
encoder no gradient. Evaluation never masks. ``tests/test_golden.py::test_amco_equals_the_reference``
runs the step against numbers recorded from BalanceBenchmark's ``AMCoTrainer.train_loop`` (with
batches of 2: its (2, C) mask only broadcasts there). Counted: ``masked_steps`` (a dependent
modality lost K >= 1 classes).

Schedule: BalanceBenchmark's window is epochs 0-80 and its runs are 30 epochs
(``configs/trainer_config.yaml``): the window never closes. Left at None, ``modulation_end`` is 80
of 30 scaled to the run's budget, i.e. past its end: the masking acts throughout, as there.

[extension] Regression (C = 1): the "classes" are the one output; K = floor(p) masks it only
when p = 1, and the unimodal terms use the task's L1 loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy


def mask_size(progress: float, eps: float, classes: int) -> int:
    """``K = floor(sin(pi/2 * min(eps, l)/eps) * C)``."""
    return math.floor(math.sin(math.pi / 2 * min(eps, progress) / eps) * classes + 1e-9)


def dependence_shares(logits: dict[str, torch.Tensor]) -> dict[str, float]:
    """Batch-mean softmax mass of each modality's block in the per-sample softmax over all logits."""
    p = torch.cat(list(logits.values()), dim=-1).softmax(-1)
    blocks = p.split([z.shape[-1] for z in logits.values()], dim=-1)
    return {m: float(b.sum(-1).mean()) for m, b in zip(logits, blocks)}


@dataclass(frozen=True)
class AMCoSettings:
    sigma: float = 0.0  # dependence threshold; 0 = the fair share 1/N (0.5 at N = 2, the reference's)
    eps: float = 0.3  # the progress at which the mask is complete
    modulation_end: Optional[int] = None  # last masked epoch; None: BB's 80 of its 30 epochs, scaled (always)

    def __post_init__(self):
        check("sigma", finite(self.sigma) and 0 <= self.sigma < 1, self.sigma, "a number in [0, 1)")
        check("eps", finite(self.eps) and self.eps > 0, self.eps, "a finite number > 0")
        check("modulation_end", self.modulation_end is None or self.modulation_end >= -1, self.modulation_end,
              "an epoch >= -1 (-1: never), or null for the reference's share of the run")


class AMCo(Strategy):
    label = "AMCo"  # its row in `cli.py table`
    method = "AMCo (ICASSP 2023), BalanceBenchmark's; needs `model.fusion=concat_mix`"
    summary = "o = L*(Σ_m μ_m ⊙ z_m): a dependent modality (softmax share > 1/N) loses K = ⌊C sin(π/2 · min(ε, ℓ)/ε)⌋ random classes; + Σ_m CE(μ_m ⊙ z_m)"
    checked = "`test_golden.py::test_amco_equals_the_reference`, `test_amco_mask_size_over_the_schedule`, `test_amco_step_masks_the_dependent_modalitys_classes_in_its_unimodal_term`"
    Settings = AMCoSettings
    state = ("progress", "dependent")  # saved in last.pt, restored on --resume
    needs_model = {"fusion": "concat_mix"}
    counts = ("masked_steps",)
    reference_epochs = 30

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        if not model.head.fuses:  # its masks act on per-modality logits before the head's fuse
            raise ValueError("amco needs its model: linear late fusion with a class-mixing layer "
                             "(set model.fusion=concat_mix)")
        self.sigma = self.settings.sigma or 1.0 / len(model.modalities)
        self.modulation_end = self.scheduled("modulation_end", 80)
        self.progress = 0.0
        self.dependent: list[str] = []

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        self.progress, self.dependent = 0.0, []

    def train_step(self, batch):
        s, head = self.settings, self.model.head
        feats = self.model.encode(batch)
        z = head.branch_logits(feats)
        if self.epoch > self.modulation_end:  # after the window: the fused loss alone, no mask
            loss = self.task.loss(head.fuse(z), batch.y)
            self.update(loss)
            self.progress += self.epoch / 10
            return {"loss": loss.item(), "mask_k": 0.0}
        classes = self.task.out_dim
        k = mask_size(self.progress, s.eps, classes)
        # K random class positions of this batch (the same draw on every rank: a global mask)
        mask = torch.ones(classes, device=self.device, dtype=next(iter(z.values())).dtype)
        if k > 0 and self.dependent:
            mask[torch.randperm(classes)[:k].to(self.device)] = 0
            self.act("masked_steps")
        masked = {m: v * mask if m in self.dependent else v for m, v in z.items()}
        loss = self.task.loss(head.fuse(masked), batch.y) + sum(self.task.loss(v, batch.y) for v in masked.values())
        self.update(loss)
        shares = {m: self.dist.mean(v) for m, v in dependence_shares({m: v.detach() for m, v in masked.items()}).items()}
        was = list(self.dependent) if k > 0 else []
        self.dependent = [m for m, v in shares.items() if v > self.sigma]
        self.progress += self.epoch / 10
        return {"loss": loss.item(), "mask_k": float(k), **{f"masked_{m}": float(m in was) for m in z}}
