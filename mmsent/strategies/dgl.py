"""DGL: Disentangled Gradient Learning (Wei, Luo & Luo, ICCV 2025), Algorithm 1 / Eq. 15.

Encoders learn only from ``alpha * sum_m L_m`` (unimodal losses through the shared head with the
other modalities zeroed, Eq. 11-14); the head learns only from ``L_d`` on detached features
(Eq. 9-10). ``truncate_multimodal=False`` / ``truncate_unimodal=False`` give the "+UT" / "+MT"
ablations of Table 3. The gradient arithmetic lives in :func:`mmsent.dgl.dgl_loss`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mmsent.checks import check, finite
from mmsent.dgl import dgl_loss
from mmsent.strategies.base import Strategy


@dataclass(frozen=True)
class DGLSettings:
    # weight on sum_m L_m (Eq. 15; Table 4: 4 is best on CREMA-D); the CLI's --alpha sets it
    alpha: float = field(default=1.0, metadata={"flag": "--alpha"})
    truncate_multimodal: bool = True  # MT: L_d on detached features
    truncate_unimodal: bool = True  # UT: L_m never reaches the head

    def __post_init__(self):
        check("alpha", finite(self.alpha) and self.alpha >= 0, self.alpha, "a finite number >= 0")


class DGL(Strategy):
    label = "DGL"  # its row in `cli.py table`
    dense_ok = True  # per-pixel losses only: defined for segmentation (test_dense_prediction_one_backward_...)
    method = "DGL (ICCV 2025)"
    summary = "any N via `dgl_loss`"
    checked = "`test_golden.py::test_dgl_equals_the_authors_code`, `test_dgl.py::test_one_backward_equals_algorithm_1`"
    short_run = {"alpha": 2.0}  # its between-epoch work happens within two epochs
    Settings = DGLSettings

    def train_step(self, batch):
        out = dgl_loss(self.model.encode(batch), self.model.head, self.task.loss, batch.y, **asdict(self.settings))
        self.update(out.total)
        return {"loss": out.multimodal.item(), **{f"loss_{m}": v.item() for m, v in out.unimodal.items()}}
