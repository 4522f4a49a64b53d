"""``MultimodalModel``: a dict of encoders plus one head. Between calls it keeps only each encoder's
output shape (``feature_shapes``, recorded by every encode), to zero-fill a modality a pass leaves out."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from mmsent.data.batch import Batch
from mmsent.dgl import call_keeping_buffers, keep_only


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block, the caller's mode restored after it (even on error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
        # Per-sample output shape of each encoder, recorded by ``encode``: encoders may differ (a
        # spectrogram map and a frames map), and a modality that was never encoded in a step still
        # needs zeros of its own shape.
        self.feature_shapes: dict[str, tuple[int, ...]] = {}

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(self, batch: Batch, modalities: Iterable[str] | None = None) -> dict[str, Tensor]:
        names = self.modalities if modalities is None else list(modalities)
        out = {m: self.encoders[m](batch.x[m], batch.mask[m]) for m in names}
        self.feature_shapes.update({m: tuple(z.shape[1:]) for m, z in out.items()})
        return out

    def mask_modalities(self, feats: dict[str, Tensor], keep: Iterable[str]) -> dict[str, Tensor]:
        """Zero every modality not in ``keep``. A modality absent from ``feats`` (never encoded)
        becomes zeros of its encoder's recorded output shape (``build_model`` records all)."""
        like = next(iter(feats.values()))
        full = {m: feats[m] if m in feats else like.new_zeros((len(like), *self.feature_shapes[m]))
                for m in self.modalities}
        return keep_only(full, keep)

    def head_masked(self, feats: dict[str, Tensor]) -> Tensor:
        """``head(feats)`` for a zero-masked input without moving BatchNorm running statistics
        (shared docs/method.md: masked passes must not update them); gradients flow as in ``head(feats)``."""
        return call_keeping_buffers(self.head, feats)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.encode(batch))
