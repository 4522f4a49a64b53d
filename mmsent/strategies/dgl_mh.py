"""DGL-MH: Disentangled Gradient Learning for heads that mix modalities (MLP-Mixer, MMTM).

What it keeps from DGL (Wei, Luo & Luo, ICCV 2025, Eq. 9-15, Algorithm 1): the encoders learn only
from ``alpha * sum_m L_m``, the unimodal losses through the SAME head with the other modalities
masked, and never from the multimodal loss (multimodal truncation); the head learns ``L_d`` on
detached features.

What it changes: the head ALSO learns ``head_weight * sum_m L_m`` on detached features, i.e. it is
taught to read each modality alone; the encoders' gradient is untouched (still exactly DGL's).

Why: the paper's analysis (Sec. 3.1, Eq. 3-8) is for late fusion, ``W [z_1; z_2] + b``, where the
masked pass ``W_1 z_1 + b`` is modality 1's own share of the fused logit, so fitting the head on
``L_d`` also fits what ``L_1`` is computed through. A head that mixes modalities has no such share:
under unimodal truncation a masked input is something it never fits, its response to it drifts as
it fits ``L_d``, and the encoders chase that drift. Measured on a real six-view set with the mixer
(README, "DGL through mixing heads"): within two epochs DGL's encoder feature norms grow 10-30x,
the masked passes' losses reach 10-25 with top probabilities near 1, and every branch sits at
chance. With the head fitted on the masked passes too, the unimodal gradient flows through a head
that does read one modality at a time, the case the paper's derivation describes.

How it differs from the paper's "+MT" ablation (Table 3, UT off): there the head receives
``alpha * grad L_m``, its weight tied to the encoders'; here its weight ``head_weight`` (beta) is
its own, and small by default (0.1, chosen on validation over five settings, README), so ``L_d``
still dominates the head. ``head_weight = alpha`` is exactly "+MT"; ``head_weight = 0`` exactly DGL
(both tested against two-pass references in tests/test_dgl.py).

``fill`` chooses what a masked modality becomes in the training passes: ``zero`` (the paper, and
what the branch evaluation uses) or ``mean`` (the detached batch mean of its features, which keeps
the masked input inside the range the head is fitted on; it lifted the fused model on MOSI but left
zero-masked branches at chance on the six-view set, so it is not the default).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mmsent.checks import check, finite
from mmsent.dgl import FILLS, dgl_loss
from mmsent.strategies.base import Strategy


@dataclass(frozen=True)
class DGLMHSettings:
    # weight on sum_m L_m for the encoders (Eq. 15); the CLI's --alpha sets it
    alpha: float = field(default=1.0, metadata={"flag": "--alpha"})
    head_weight: float = 0.1  # beta: the head's weight on sum_m L_m (detached features)
    fill: str = "zero"  # what a masked modality becomes in training: zero | mean

    def __post_init__(self):
        check("alpha", finite(self.alpha) and self.alpha > 0, self.alpha, "a finite number > 0")
        check("head_weight", finite(self.head_weight) and self.head_weight >= 0, self.head_weight, "a finite number >= 0")
        check("fill", self.fill in FILLS, self.fill, " or ".join(FILLS))


class DGLMH(Strategy):
    method = "DGL-MH: mmsent's variant, DGL with the head also fitted on the masked passes (`head_weight` 0.1, `fill` zero or mean)"
    summary = "any N via `dgl_loss(head_weight=, fill=)`"
    checked = "its own two-pass form: `test_mixing_head_form_matches_its_two_pass_reference`"
    Settings = DGLMHSettings
    dense_ok = True  # per-pixel losses only: defined for segmentation

    def train_step(self, batch):
        out = dgl_loss(self.model.encode(batch), self.model.head, self.task.loss, batch.y, **asdict(self.settings))
        self.update(out.total)
        return {"loss": out.multimodal.item(), **{f"loss_{m}": v.item() for m, v in out.unimodal.items()}}
