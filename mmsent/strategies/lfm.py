"""LFM: dynamically learning the modality gap (Yang, Wan, Jiang, Xu et al., "Facilitating
Multimodal Classification via Dynamically Learning Modality Gap", NeurIPS 2024), for N modalities.

Reference followed: njustkmg/NeurIPS24-LFM@ad44fa0 ``Crema_epoch.py`` (the heuristic integration)
and ``model/AudioVideo.py`` (shared ``docs/research/balancemm-methods.md`` §5).

Diagnosis: supervised training fits the labels through the modality that fits them fastest; an
unsupervised alignment of the modalities' predictions does not favour it. LFM trains both and
shifts the weight from alignment to classification over training [source]:

    o_m     = C_m f_m                 (per-modality classifiers; model.fusion=late_mean,
                                       whose prediction is their mean)
    L_cls   = CE(mean_m o_m, y)
    L_align = (KL(r || p_a) + KL(r || p_v)) / 2,  p_m = softmax(o_m), r = (p_a + p_v)/2,
              averaged over the batch (no labels) -- the reference's ``Alignment``: it calls
              ``F.kl_div(p.log(), r, 'batchmean')``, which is KL(r || p), not the textbook
              Jensen-Shannon's KL(p || r) (``alignment: js`` gives that one, mmsent's option)
    L       = 2 (alpha_1(t) L_cls + (1 - alpha_1(t)) L_align),
    alpha_1(t) = a_0 + a_1 t + ... + a_5 t^5   (the reference's polynomial, fitted over 200 epochs
                                                on CREMA-D; t held at 199 beyond it)

so alpha_1 is 0.205 at the start and 0.539 half-way: alignment dominates the early epochs.
``tests/test_golden.py::test_lfm_equals_the_reference`` runs the step against numbers recorded
from the reference's ``train_audio_video`` and ``getAlpha_Learnable_Fitted``.

Schedule: the polynomial spans the reference's 200 epochs. ``span`` is the number of this run's
epochs that course is stretched over: left at None it is the run's budget (``train.epochs``), so
a 40-epoch run sees alpha_1 go from 0.205 to 0.916 as the reference's 200 epochs do (t = epoch *
200 / span); ``span: 200`` is the reference's clock, unscaled.

Not built: the reference's learning-based integration (a Hessian-vector-product surrogate on a
held-out batch); only the heuristic ("fitted") strategy is.

[extension, BalanceBenchmark] N > 2: the mean alignment over the N(N-1)/2 pairs. [extension, spec]
Other heads: o_m is the zero-masked branch through the shared head and L_cls the host's fused
output. [extension] Regression: each o_m is the mean of a unit Gaussian and the mixture is
replaced by the Gaussian at the midpoint, so a pair's term is ``(o_a - o_v)^2 / 8``. Exact under
torchrun (every term is a batch mean).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from mmsent.checks import check
from mmsent.strategies.base import Strategy

# the reference's fitted alpha_1(t) (Crema_epoch.py), lowest power first
POLY = (2.04623704e-1, 3.35472727e-3, 1.22989557e-4, -2.92947416e-6, 2.23835486e-8, -5.39717505e-11)


def alpha_cls(t: float) -> float:
    """``alpha_1(t)`` on the reference's clock, t held at 199 (the fit's last epoch) beyond it."""
    t = min(t, 199)
    return sum(a * t**k for k, a in enumerate(POLY))


def js_divergence(a: Tensor, b: Tensor) -> Tensor:
    """Batch-mean textbook Jensen-Shannon divergence between softmax(a) and softmax(b):
    ``(KL(p_a || r) + KL(p_b || r)) / 2`` (natural log)."""
    pa, pb = a.softmax(-1), b.softmax(-1)
    log_r = (0.5 * (pa + pb)).clamp_min(1e-12).log()
    kl = lambda p, logp: (p * (logp - log_r)).sum(-1)  # noqa: E731
    return (0.5 * (kl(pa, a.log_softmax(-1)) + kl(pb, b.log_softmax(-1)))).mean()


def reference_alignment(a: Tensor, b: Tensor) -> Tensor:
    """The reference's ``Alignment``: ``(KL(r || p_a) + KL(r || p_b)) / 2``, r the mixture, batch mean."""
    pa, pb = a.softmax(-1), b.softmax(-1)
    r = 0.5 * (pa + pb)
    log_r = r.clamp_min(1e-12).log()
    return (0.5 * ((r * (log_r - a.log_softmax(-1))).sum(-1) + (r * (log_r - b.log_softmax(-1))).sum(-1))).mean()


def alignment(task_name: str, logits: dict[str, Tensor], form: str = "code") -> Tensor:
    """Mean pairwise alignment (classification: the reference's, or the textbook JS) or its
    Gaussian analogue (regression)."""
    pairs = list(itertools.combinations(logits.values(), 2))
    if task_name == "classification":
        term = reference_alignment if form == "code" else js_divergence
        return sum(term(a, b) for a, b in pairs) / len(pairs)
    return sum(((a - b) ** 2).mean() / 8 for a, b in pairs) / len(pairs)


@dataclass(frozen=True)
class LFMSettings:
    alignment: str = "code"  # code: the reference's KL(r || p) terms | js: the textbook Jensen-Shannon
    span: Optional[int] = None  # run epochs the fitted 200-epoch course of alpha_1 spans; None: train.epochs

    def __post_init__(self):
        check("alignment", self.alignment in ("code", "js"), self.alignment, "'code' or 'js'")
        check("span", self.span is None or self.span >= 1, self.span, "an integer >= 1, or null for the run's epochs")


class LFM(Strategy):
    label = "LFM"  # its row in `cli.py table`
    method = "LFM (NeurIPS 2024), official heuristic strategy; model `model.fusion=late_mean` (any head accepted)"
    summary = "2(α₁(t) CE(mean_m o_m) + (1 − α₁(t)) mean pairwise ½[KL(r‖p_m) + KL(r‖p_k)]), α₁ the reference's fitted polynomial over the run's epochs"
    checked = "`test_golden.py::test_lfm_equals_the_reference`, `test_lfm_alpha_schedule_matches_the_references_values`, the step test"
    Settings = LFMSettings
    needs_model = {"fusion": "late_mean"}
    also_on = ("*",)  # the zero-masked branches of any head (the spec's extension)
    reference_epochs = 200

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.span = self.scheduled("span", 200)

    def train_step(self, batch):
        feats = self.model.encode(batch)
        cls = self.task.loss(self.model.head(feats), batch.y)
        align = alignment(self.task.name, self.unimodal_logits(feats), self.settings.alignment)
        a1 = alpha_cls(self.epoch * 200 / self.span)
        loss = 2 * (a1 * cls + (1 - a1) * align)
        self.update(loss)
        return {"loss": cls.item(), "align": align.item(), "alpha_cls": a1}
