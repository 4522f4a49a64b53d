"""DGL for mixing heads (experimental while being chosen on validation)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from mmsent.config import check, finite
from mmsent.dgl import FILLS, dgl_loss
from mmsent.strategies.base import Strategy


@dataclass(frozen=True)
class DGLMHSettings:
    alpha: float = 1.0
    head_weight: float = 0.0
    fill: str = "zero"

    def __post_init__(self):
        check("alpha", finite(self.alpha) and self.alpha > 0, self.alpha, "a finite number > 0")
        check("head_weight", finite(self.head_weight) and self.head_weight >= 0, self.head_weight, "a finite number >= 0")
        check("fill", self.fill in FILLS, self.fill, " or ".join(FILLS))


class DGLMH(Strategy):
    Settings = DGLMHSettings

    def train_step(self, batch):
        out = dgl_loss(self.model.encode(batch), self.model.head, self.task.loss, batch.y, **asdict(self.settings))
        self.update(out.total)
        return {"loss": out.multimodal.item(), **{f"loss_{m}": v.item() for m, v in out.unimodal.items()}}
