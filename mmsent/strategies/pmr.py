"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023), for N modalities.

Reference followed: the paper's equations (the released fanyunfeng-bit/Modal-Imbalance-PMR code
uses binary coefficients and has no PER; ``coefficients="code"`` gives its binary form; shared
docs/research/baselines.md §5).

Prototypes ``c^m_k`` are class means of each encoder's (flattened) features, recomputed at each
epoch start on a fresh random 10% subset of train (the reference's first tenth of a shuffled
loader; drawn from the run's RNG, so resumable) in eval mode and EMA-smoothed
(``c = (1 - momentum) c_new + momentum c_old``, Eq. 12). A modality's prototype classifier is
``softmax_k(-||z^m - c^m_k||)``; its batch score is ``s_m = sum_i p^m_i(y_i)`` (Eq. 8). For N
modalities (paper-faithful form): ``dom = argmax_m s_m`` and every other modality gets
``beta_m = clip(s_dom / s_m - 1, 0, 1)`` (Eq. 11; exactly the 2-modality beta/gamma at N = 2);
``L = L_task + alpha * sum_m beta_m * PCE_m`` (Eq. 10), and for the first ``per_epochs`` epochs the
entropy of the dominant modality's prototype distribution is maximised with weight
``mu * max_m beta_m`` (PER, Eq. 13; missing from the released code). The prototype losses act in
epochs ``0 .. modulation_end`` (the reference: 100 of 150 epochs). Regression labels are binned
with ``task.classes`` (MOSI: y >= 0).
"""
from __future__ import annotations

from dataclasses import dataclass

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
    mu: float = 1e-2  # PER entropy weight (Eq. 13)
    per_epochs: int = 5  # epochs with PER
    momentum: float = 0.2  # prototype EMA (Eq. 12)
    subset: float = 0.1  # fraction of train used for prototypes
    modulation_end: int = 100  # last epoch with the prototype losses (the reference: 100 of 150)
    coefficients: str = "paper"  # "paper": Eq. 11's clipped ratio; "code": the released binary form

    def __post_init__(self):
        check("coefficients", self.coefficients in ("paper", "code"), self.coefficients, "'paper' or 'code'")
        for key in ("alpha", "mu"):
            v = getattr(self, key)
            check(key, finite(v) and v >= 0, v, "a finite number >= 0")
        check("momentum", finite(self.momentum) and 0 <= self.momentum < 1, self.momentum, "in [0, 1)")
        check("subset", finite(self.subset) and 0 < self.subset <= 1, self.subset, "in (0, 1]")


class PMR(Strategy):
    label = "PMR"  # its row in `cli.py table`
    method = "PMR (CVPR 2023) with PER, the paper's form (`coefficients: code` for the released binary one)"
    summary = "β_m = clip(s_dom/s_m − 1, 0, 1) on prototype losses in epochs 0–100, prototypes from a fresh 10 % subset each epoch"
    checked = "`test_pmr_beta_gamma_oracle`, `test_pmr_window_binary_coefficients_and_fresh_subsets`, `test_pmr_per_maximises_the_dominant_prototype_entropy`"
    Settings = PMRSettings
    state = ("protos",)  # saved in last.pt, restored on --resume

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.protos: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def compute_prototypes(self, split, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Class means over ``rows`` of ``split`` (default: its first ``subset`` fraction)."""
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
            old = self.protos.get(m)
            if old is not None:  # a class absent from the subset keeps its old prototype
                new = torch.where(present, (1 - self.settings.momentum) * new + self.settings.momentum * old, old)
            out[m] = new
        return out

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        # a fresh random subset each epoch, from the run's RNG (the same on every rank; resumable)
        n = max(1, int(len(data.train) * self.settings.subset))
        self.protos = self.compute_prototypes(data.train, torch.randperm(len(data.train))[:n].sort().values)

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss = self.task.loss(self.model.head(feats), batch.y)
        labels = self.task.classes(batch.y)
        logits = {m: prototype_logits(z, self.protos[m]) for m, z in feats.items()}
        with torch.no_grad():
            scores = {m: self.dist.sum(float(l.softmax(-1).gather(1, labels[:, None]).sum())) for m, l in logits.items()}
        betas = pmr_betas(scores, self.settings.coefficients == "code")
        if self.epoch > self.settings.modulation_end:
            betas = dict.fromkeys(betas, 0.0)
        total = loss + self.settings.alpha * sum(b * F.cross_entropy(logits[m], labels) for m, b in betas.items() if b > 0)
        if self.epoch < self.settings.per_epochs and max(betas.values()) > 0:
            dom = max(scores, key=scores.get)
            p = logits[dom].softmax(-1)
            entropy = -(p * p.clamp(min=1e-12).log()).sum(-1).mean()
            total = total - self.settings.mu * max(betas.values()) * entropy
        self.update(total)
        return {"loss": loss.item(), **{f"beta_{m}": b for m, b in betas.items()}}
