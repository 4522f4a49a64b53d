"""Vanilla joint training: one loss on the fused prediction (the paper's "Concat"/"Multimodal
Baseline" rows, Eq. 1)."""
from __future__ import annotations

from mmsent.strategies.base import Strategy


class Vanilla(Strategy):
    def train_step(self, batch):
        loss = self.task.loss(self.model(batch), batch.y)
        self.update(loss)
        return {"loss": loss.item()}
