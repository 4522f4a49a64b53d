"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023), for N modalities.

Two forms (``form``), both defined for N modalities:

* ``paper`` (default): the paper's equations. Eq. 11's clipped coefficients and PER (Eq. 13), which
  the released code lacks.
* ``code``: the released fanyunfeng-bit/Modal-Imbalance-PMR@3615e48 ``main_Prototype_grad.py`` as a
  whole: binary coefficients (``alpha`` on the prototype loss of every modality scoring below the
  dominant one), no PER, prototypes from the first tenth of a shuffled pass over train (at least
  one batch), and no EMA until the prototypes made after epoch 1 (its ``calculate_prototype``
  smooths only when the epoch it is given is > 0). ``tests/test_golden.py::test_pmr_code_form_equals_the_reference``
  runs it against numbers recorded from that code.

Prototypes ``c^m_k`` are class means of each encoder's (flattened) features, recomputed at each
epoch start (from the model after the previous epoch, in eval mode; drawn from the run's RNG, so
resumable) and EMA-smoothed (``c = (1 - momentum) c_new + momentum c_old``, Eq. 12); the paper
form draws a fresh random ``subset`` (10 %) of train each epoch. A modality's prototype classifier is
``softmax_k(-||z^m - c^m_k||)``; its batch score is ``s_m = sum_i p^m_i(y_i)`` (Eq. 8). For N
modalities (paper form): ``dom = argmax_m s_m`` and every other modality gets
``beta_m = clip(s_dom / s_m - 1, 0, 1)`` (Eq. 11; exactly the 2-modality beta/gamma at N = 2);
``L = L_task + alpha * sum_m beta_m * PCE_m`` (Eq. 10), and for the first ``per_epochs`` epochs the
entropy of the dominant modality's prototype distribution is maximised with weight
``mu * max_m beta_m`` (PER, Eq. 13).

Schedule: the prototype losses act in epochs ``0 .. modulation_end``. The reference stops at 100
of its 150 epochs; left at None, ``modulation_end`` is that share of the run's budget,
``round(100 * epochs / 150)`` (27 of a 40-epoch run). Counted: ``modulated_steps``, the steps whose
loss held a prototype term. Regression labels are binned with ``task.classes`` (MOSI: y >= 0).

What comes from where: [source, paper Eqs. 8-13] the prototypes, their EMA, the prototype classifier,
the batch scores, Eq. 11's coefficients, PER; [source, released code] the binary coefficients, no
PER, a tenth of the batches for prototypes, the 0-100 window of 150 epochs. [extension] N > 2 (the
dominant modality against each other one), regression (binned labels), a fresh random subset each
epoch in the paper form, the window scaled to shorter runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from mmsent.checks import check, finite
from mmsent.data.batch import EVAL_BATCH
from mmsent.models.model import evaluating
from mmsent.strategies.base import Strategy, feature_vectors


def pmr_betas(scores: dict[str, float], binary: bool = False) -> dict[str, float]:
    """Eq. 11 for N modalities: ``clip(s_dom / s_m - 1, 0, 1)``; ``binary``: the released code's 1 for
    every modality scoring below the dominant one."""
    dom = max(scores, key=scores.get)
    if binary:
        return {m: 1.0 if m != dom and s < scores[dom] else 0.0 for m, s in scores.items()}
    return {m: 0.0 if m == dom else min(max(scores[dom] / s - 1.0, 0.0), 1.0) for m, s in scores.items()}


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    return -torch.cdist(feature_vectors(z), protos)  # (B, K)


@dataclass(frozen=True)
class PMRSettings:
    alpha: float = 1.0  # weight of the prototype losses (Eq. 10)
    mu: float = 1e-2  # PER entropy weight (Eq. 13; the paper form only)
    per_epochs: int = 5  # epochs with PER (the paper form only)
    momentum: float = 0.2  # prototype EMA (Eq. 12)
    subset: float = 0.1  # fraction of train used for prototypes (the paper form; code: a tenth of the batches)
    modulation_end: Optional[int] = None  # last epoch with the prototype losses; None: 100 of 150, scaled
    form: str = "paper"  # "paper": Eq. 11's clipped ratio and PER; "code": the released code as a whole

    def __post_init__(self):
        check("form", self.form in ("paper", "code"), self.form, "'paper' or 'code'")
        for key in ("alpha", "mu"):
            v = getattr(self, key)
            check(key, finite(v) and v >= 0, v, "a finite number >= 0")
        check("momentum", finite(self.momentum) and 0 <= self.momentum < 1, self.momentum, "in [0, 1)")
        check("subset", finite(self.subset) and 0 < self.subset <= 1, self.subset, "in (0, 1]")
        check("modulation_end", self.modulation_end is None or self.modulation_end >= -1, self.modulation_end,
              "an epoch >= -1 (-1: never), or null for the reference's share of the run")


class PMR(Strategy):
    label = "PMR"  # its row in `cli.py table`
    method = "PMR (CVPR 2023) with PER, the paper's form (`form: code` for the released code: binary coefficients, no PER)"
    summary = "β_m = clip(s_dom/s_m − 1, 0, 1) on prototype losses in the first 2/3 of the epochs (the reference's 100 of 150), prototypes from a fresh 10 % subset each epoch"
    checked = "`test_golden.py::test_pmr_code_form_equals_the_reference`, `test_pmr_beta_gamma_oracle`, `test_pmr_per_maximises_the_dominant_prototype_entropy`"
    Settings = PMRSettings
    state = ("protos",)  # saved in last.pt, restored on --resume
    counts = ("modulated_steps",)
    idle_is_vanilla = True
    reference_epochs = 150

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.protos: dict[str, torch.Tensor] = {}
        self.modulation_end = self.scheduled("modulation_end", 100)

    @torch.no_grad()
    def compute_prototypes(self, split, rows: torch.Tensor | None = None, smooth: bool = True) -> dict[str, torch.Tensor]:
        """Class means over ``rows`` of ``split`` (default: its first ``subset`` fraction), EMA-smoothed
        with the current prototypes when ``smooth`` and there are any."""
        n = max(1, int(len(split) * self.settings.subset))
        rows = torch.arange(n) if rows is None else rows
        K = self.task.num_classes
        sums: dict[str, torch.Tensor] = {}
        counts = torch.zeros(K, device=self.device)
        with evaluating(self.model):
            for start in range(0, len(rows), EVAL_BATCH):  # an audio-visual subset does not fit at once
                batch = split.batch(rows[start:start + EVAL_BATCH], deferred=True).to(self.device)
                labels = self.task.classes(batch.y)
                counts += torch.bincount(labels, minlength=K)
                for m, z in self.model.encode(batch).items():
                    z = feature_vectors(z)
                    sums[m] = sums.get(m, torch.zeros(K, z.shape[1], device=z.device, dtype=z.dtype)).index_add_(0, labels, z)
        out = {}
        present = (counts > 0)[:, None]
        for m, s in sums.items():
            new = s / counts.clamp(min=1)[:, None]
            old = self.protos.get(m) if smooth else None
            if old is not None:  # a class absent from the subset keeps its old prototype
                new = torch.where(present, (1 - self.settings.momentum) * new + self.settings.momentum * old, old)
            out[m] = new
        return out

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        # a fresh random subset each epoch, from the run's RNG (the same on every rank; resumable)
        if self.settings.form == "code":  # the first len(loader) // 10 batches of a shuffled loader, at least one
            n = max(1, self.steps_per_epoch // 10) * self.batch_size
        else:
            n = int(len(data.train) * self.settings.subset)
        n = min(len(data.train), max(1, n))
        # the released code smooths from the prototypes it makes after epoch 1 on (epoch 2's)
        smooth = epoch >= 2 if self.settings.form == "code" else True
        self.protos = self.compute_prototypes(data.train, torch.randperm(len(data.train))[:n].sort().values, smooth)

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss = self.task.loss(self.model.head(feats), batch.y)
        labels = self.task.classes(batch.y)
        logits = {m: prototype_logits(z, self.protos[m]) for m, z in feats.items()}
        with torch.no_grad():
            scores = {m: self.dist.sum(float(l.softmax(-1).gather(1, labels[:, None]).sum())) for m, l in logits.items()}
        code = self.settings.form == "code"
        betas = pmr_betas(scores, code)
        if self.epoch > self.modulation_end:
            betas = dict.fromkeys(betas, 0.0)
        total = loss + self.settings.alpha * sum(b * F.cross_entropy(logits[m], labels) for m, b in betas.items() if b > 0)
        if not code and self.epoch < self.settings.per_epochs and max(betas.values()) > 0:
            dom = max(scores, key=scores.get)
            p = logits[dom].softmax(-1)
            entropy = -(p * p.clamp(min=1e-12).log()).sum(-1).mean()
            total = total - self.settings.mu * max(betas.values()) * entropy
        if max(betas.values()) > 0:
            self.act("modulated_steps")
        self.update(total)
        return {"loss": loss.item(), **{f"beta_{m}": b for m, b in betas.items()}}
