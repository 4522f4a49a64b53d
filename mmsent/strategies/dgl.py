"""DGL: Disentangled Gradient Learning (Wei, Luo & Luo, ICCV 2025), Algorithm 1 / Eq. 15.

Encoders learn only from ``alpha * sum_m L_m`` (unimodal losses through the shared head with the
other modalities zeroed, Eq. 11-14); the head learns only from ``L_d`` on detached features
(Eq. 9-10). ``truncate_multimodal=False`` / ``truncate_unimodal=False`` give the "+UT" / "+MT"
ablations of Table 3. The gradient arithmetic lives in :func:`mmsent.dgl.dgl_loss`.
"""
from __future__ import annotations

from mmsent.dgl import dgl_loss
from mmsent.strategies.base import Strategy


class DGL(Strategy):
    def __init__(
        self, model, optimizer, task, *, alpha: float = 1.0, truncate_multimodal: bool = True,
        truncate_unimodal: bool = True, grad_clip: float = 0.0,
    ):
        super().__init__(model, optimizer, task, grad_clip=grad_clip)
        self.alpha, self.truncate_multimodal, self.truncate_unimodal = alpha, truncate_multimodal, truncate_unimodal

    def train_step(self, batch):
        out = dgl_loss(
            self.model.encode(batch), self.model.head, self.task.loss, batch.y, alpha=self.alpha,
            truncate_multimodal=self.truncate_multimodal, truncate_unimodal=self.truncate_unimodal,
        )
        self.update(out.total)
        return {"loss": out.multimodal.item(), **{f"loss_{m}": v.item() for m, v in out.unimodal.items()}}
