"""Unimodal-only training: one modality through the same head with the others zeroed (the
paper's "Audio-only" / "Visual-only" / "Text-only" rows). Only that modality's encoder runs.

The model's own prediction ("multi", what validation selects the epoch on) is that same masked
pass: the other encoders are never trained, and letting their outputs into the head (an MMTM head
gates the trained stream with them) scored a random model and chose the epoch at random."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmsent.strategies.base import Strategy


@dataclass(frozen=True)
class UnimodalSettings:
    modality: str = ""  # the modality key to train (required; checked against the model's)


class Unimodal(Strategy):
    Settings = UnimodalSettings

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.modality = self.settings.modality
        if self.modality not in model.modalities:
            raise ValueError(f"unimodal strategy: unknown modality {self.modality!r} (strategy.args.modality); "
                             f"choose from {', '.join(model.modalities)}")

    def train_step(self, batch):
        feats = self.model.encode(batch, [self.modality])
        loss = self.task.loss(self.model.head(self.model.mask_modalities(feats, [self.modality])), batch.y)
        self.update(loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, batch, keep=None):
        return super().predict(batch, [self.modality] if keep is None else keep)
