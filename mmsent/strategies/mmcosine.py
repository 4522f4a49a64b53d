"""MMCosine: Multi-Modal Cosine loss (Xu, Feng, Zhang & Hu, ICASSP 2023), for N modalities.

A late-fusion linear classifier ``W [f_1; ...; f_N] + b`` splits into one weight block per
modality, ``W = [W_1 ... W_N]``. MMCosine drops the bias and L2-normalises, modality by modality,
both the feature and every class's weight row, so each modality votes with a cosine bounded in
[-1, 1] whatever the norms of its features and weights (the paper's diagnosis: the dominant
modality wins by growing those norms). The logit of class c is

    z_c = s * sum_m cos(W_{m,c}, f_m),

trained with the task's loss; ``s`` (``scaling``) restores a usable softmax temperature. At N = 2
this is the paper's ``s (cos theta_a + cos theta_v)``; for N modalities the sum simply runs over all
of them (each block is normalised on its own, so no modality's vote outweighs another's by scale).

What it needs: a head whose last layer is linear over the concatenated pooled features, i.e.
``model.fusion=concat`` with ``model.hidden=0`` (the audio-visual baselines' concat -> fc). Any
other head mixes modalities before the last layer, so there is no per-modality block to normalise;
that combination is refused with one line. The bias of the linear layer is left unused.

Regression (one output) is the same formula with one "class": the prediction is ``s * sum_m cos``,
so it is bounded by ``s * N`` (``scaling`` must cover the label range: MOSI's [-3, 3] needs s >= 3/N).
A branch with only modality m kept (the others zeroed) is ``s * cos(W_m, f_m)``: a zero feature has
no direction and votes 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy, linear_late_fusion, weight_blocks


def cosine_logits(pooled: dict[str, Tensor], blocks: dict[str, Tensor], scaling: float) -> Tensor:
    """``s * sum_m normalize(f_m) @ normalize(W_m)^T`` with ``pooled[m]`` (B, D_m) and ``blocks[m]``
    (C, D_m). ``F.normalize`` maps a zero vector to zero (its eps), so a zeroed modality adds 0."""
    return scaling * sum(F.normalize(pooled[m], dim=-1) @ F.normalize(blocks[m], dim=-1).T for m in blocks)


@dataclass(frozen=True)
class MMCosineSettings:
    scaling: float = 10.0  # s: the logit scale

    def __post_init__(self):
        check("scaling", finite(self.scaling) and self.scaling > 0, self.scaling, "a finite number > 0")


class MMCosine(Strategy):
    label = "MMCosine"  # its row in `cli.py table`
    method = "MMCosine (ICASSP 2023); needs `model.fusion=concat model.hidden=0`"
    summary = "z_c = s Σ_m cos(W_{m,c}, f_m): one L2-normalised weight block per modality, no bias"
    checked = "`test_golden.py::test_mmcosine_equals_the_reference`, `test_mmcosine_two_modality_oracle`"
    Settings = MMCosineSettings
    needs_model = {"fusion": "concat", "hidden": 0}

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.fc = linear_late_fusion(model, "mmcosine")
        self.order = model.head.modalities  # the concatenation order: the column blocks of fc.weight

    def blocks(self) -> dict[str, Tensor]:
        return weight_blocks(self.fc, self.order)

    def logits(self, feats: dict[str, Tensor]) -> Tensor:
        # ConcatHead pools each modality by a mean over its first non-batch axis before the fc
        return cosine_logits({m: feats[m].mean(1) for m in self.order}, self.blocks(), self.settings.scaling)

    def train_step(self, batch):
        loss = self.task.loss(self.logits(self.model.encode(batch)), batch.y)
        self.update(loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, batch, keep=None):
        feats = self.model.encode(batch, keep)
        return self.logits(self.model.mask_modalities(feats, keep if keep is not None else feats))
