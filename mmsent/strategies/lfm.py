"""LFM: Learning the modality gap dynamically (Yang, Du, Wang, Xu, Deng et al., "Facilitating
Multimodal Classification via Dynamically Learning Modality Gap", NeurIPS 2024), for N modalities.

The paper's diagnosis: modality imbalance comes from supervised training fitting the labels
through whichever modality fits them fastest; unsupervised contrastive alignment of the modalities
does not depend on the labels, so it does not favour that modality. LFM trains both objectives and
integrates them dynamically: alignment weighs most early, when the imbalance is set, and gives way
to the supervised objective,

    L_con = mean over pairs (m, k) of the symmetric InfoNCE between the batch's pooled features
            of m and k (a sample's two modalities are the positive pair, the batch the negatives,
            cosine similarity over temperature tau),
    L     = L_task + lambda_t * L_con,   lambda_t = lambda * max(0, 1 - epoch / decay_epochs).

N modalities: the contrastive term averages the N (N - 1) / 2 modality pairs (the paper's one pair
at N = 2). Any fusion head and both tasks: the term acts on the encoders' pooled outputs, which all
have ``model.dim`` features (feature maps are average-pooled to their channels); encoders whose
outputs differ in size are refused with one line.

Source note: only the paper's abstract was readable from this machine. Combining the supervised
loss with an unsupervised cross-modal contrastive loss under a weight that changes during training
follows it (its heuristic integration strategy; the learning-based, bi-level one is not
implemented); the linear decay of the weight is mmsent's schedule.

Under torchrun the negatives are each rank's shard (the usual data-parallel InfoNCE), so LFM is
not bit-exact against one process there (tests/test_distributed.py checks its 2-rank resume only).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmsent.config import check, finite
from mmsent.strategies.base import Strategy, feature_vectors


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE: row i of ``a`` and of ``b`` are the positive pair."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def alignment_loss(pooled: dict[str, Tensor], tau: float) -> Tensor:
    pairs = list(itertools.combinations(pooled, 2))
    return sum(info_nce(pooled[m], pooled[k], tau) for m, k in pairs) / len(pairs)


@dataclass(frozen=True)
class LFMSettings:
    lam: float = 1.0  # lambda: the contrastive weight at the start
    decay_epochs: int = 10  # epochs over which the contrastive weight falls to 0
    tau: float = 0.1  # InfoNCE temperature

    def __post_init__(self):
        check("lam", finite(self.lam) and self.lam >= 0, self.lam, "a finite number >= 0")
        check("decay_epochs", self.decay_epochs >= 1, self.decay_epochs, "an integer >= 1")
        check("tau", finite(self.tau) and self.tau > 0, self.tau, "a finite number > 0")


class LFM(Strategy):
    Settings = LFMSettings

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        # the size of feature_vectors' output per modality, from the shapes build_model recorded
        sizes = {m: feature_vectors(torch.zeros(1, *s)).shape[1] for m, s in model.feature_shapes.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{m}: {n}" for m, n in sizes.items())
            raise ValueError(f"lfm aligns the modalities' pooled features, which must have one size ({listed})")

    @property
    def weight(self) -> float:
        s = self.settings
        return s.lam * max(0.0, 1.0 - self.epoch / s.decay_epochs)

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss = self.task.loss(self.model.head(feats), batch.y)
        logs = {"loss": loss.item()}
        w = self.weight
        if w > 0:
            con = alignment_loss({m: feature_vectors(f) for m, f in feats.items()}, self.settings.tau)
            logs["contrastive"] = con.item()
            loss = loss + w * con
        self.update(loss)
        return logs
