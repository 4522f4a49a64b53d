"""``MultimodalModel``: a dict of encoders plus one head. No state is kept between calls."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from mmsent.data.batch import Batch


class MultimodalModel(nn.Module):
    """Encoders ``phi_m`` (one per modality key) and the head ``h`` (fusion + predictor).

    ``encode`` gives ``{m: (B, L, D)}``; ``head(feats)`` predicts; ``mask_modalities`` zeroes every
    modality outside ``keep`` -- the single place where zero-masking happens for evaluation and for
    the strategies.
    """

    def __init__(self, encoders: dict[str, nn.Module], head: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.head = head

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(self, batch: Batch, modalities: Iterable[str] | None = None) -> dict[str, Tensor]:
        names = self.modalities if modalities is None else list(modalities)
        return {m: self.encoders[m](batch.x[m], batch.mask[m]) for m in names}

    def mask_modalities(self, feats: dict[str, Tensor], keep: Iterable[str]) -> dict[str, Tensor]:
        """Zero every modality not in ``keep``. Modalities absent from ``feats`` (never encoded)
        are filled with zeros shaped like the encoded ones: all encoders share one output shape."""
        keep = set(keep)
        like = next(iter(feats.values()))
        return {m: feats[m] if m in keep and m in feats else torch.zeros_like(like) for m in self.modalities}

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.encode(batch))
