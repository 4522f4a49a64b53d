"""Unimodal-only training: one modality through the same head with the others zeroed (the
paper's "Audio-only" / "Visual-only" / "Text-only" rows). Only that modality's encoder runs."""
from __future__ import annotations

from mmsent.strategies.base import Strategy


class Unimodal(Strategy):
    def __init__(self, model, optimizer, task, *, modality: str, grad_clip: float = 0.0):
        if modality not in model.modalities:
            raise ValueError(f"unimodal strategy: unknown modality {modality!r}; choose from {', '.join(model.modalities)}")
        super().__init__(model, optimizer, task, grad_clip=grad_clip)
        self.modality = modality

    def train_step(self, batch):
        feats = self.model.encode(batch, [self.modality])
        loss = self.task.loss(self.model.head(self.model.mask_modalities(feats, [self.modality])), batch.y)
        self.update(loss)
        return {"loss": loss.item()}
