"""AGM: Adaptive Gradient Modulation (Li et al., ICCV 2023), for N modalities.

Each modality's contribution is its Shapley value over coalitions of zero-masked features plus an
equal share of the empty coalition, ``m_m = phi_m + f(empty)/N`` (the official 2- and 3-modality
forms), so ``sum_m m_m = f(all)``. The model output is ``sum_m scale_m(m_m)`` where ``scale_m`` is the
identity forward and multiplies the gradient by ``coeff_m`` (the official backward hooks).

Scores are the task loss of each ``m_m`` (lower is better). With running means ``T_m`` over all
iterations, ``ratio_m = exp(mean_{j != m} s_j - s_m)`` and ``opt_m = exp(mean_{j != m} T_j - T_m)``
(the official 3-modality formula in general form; ``exp(s_v - s_a)`` at N = 2), and
``coeff_m = exp(alpha * min(opt_m - ratio_m, cap))``; the cap is the reference's for the number of
modalities unless set: 10 for two (``run/CREMAD_main.py``), 7 for three or more
(``run/URFunny_main.py``, its 3-modality code). BalanceBenchmark's flipped sign and dropped empty
coalition are not reproduced.

Reference followed: lihong2303/AGM_ICCV2023@5a65542 ``run/CREMAD_main.py::train`` and
``model/CREMAD_net.py::GradMod`` (shared docs/research/baselines.md §6);
``tests/test_golden.py::test_agm_equals_the_reference`` runs both against numbers recorded from
that code. Its conditional clip is kept (``conditional_clip``): after the backward, if any entry of
the head's last weight gradient exceeds 1 in magnitude, all gradients are clipped to total norm 1
-- on MOSI, whose recipe has no ``grad_clip``, it is what bounds the exponential coefficients.
Departure, stated: the reference zeroes a coalition's missing modalities at the INPUT and re-runs
the encoders in eval mode; here the coalitions zero the encoders' features and re-run only the head
(``head_masked``: BatchNorm statistics untouched), which is the same zero-masking every other
method uses (the two agree for encoders that map a zero input to a zero feature, as the golden
test's do). The reference's window (``modulation_ends`` 20 of its script) is not used: its
maintainer describes AGM as "a continuous process of modulation" (lihongcs/AGM issues #3, #5).
Counted: ``modulated_steps`` (a coefficient other than 1) and ``clipped_steps``.

What comes from where: [source] (AGM_ICCV2023 ``GradMod`` and ``train``) the Shapley contributions
with f(empty)/N, the loss of their sum with per-contribution gradient scaling, the CE scores and
running means, ``exp(alpha * min(opt - ratio, cap))``, the caps 10 (two modalities) and 7 (three),
the conditional clip; the 3-modality ratio ``exp((mean - s_m) 3/2)``. [extension] N > 3 (the same
general ratio ``exp(mean_{j != m} s_j - s_m)`` and cap 7), zeroing features instead of inputs,
regression's scores (the task loss of each contribution), no modulation window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy
from mmsent.strategies.shapley import coalitions, shapley_contributions


def agm_coefficients(scores: dict[str, float], running: dict[str, float], alpha: float, cap: float = 10.0):
    def ratio(s):
        return {m: math.exp(sum(s[j] for j in s if j != m) / (len(s) - 1) - v) for m, v in s.items()}

    r, opt = ratio(scores), ratio(running)
    return {m: math.exp(alpha * min(opt[m] - r[m], cap)) for m in scores}


def _scale_grad(x: Tensor, k: float) -> Tensor:
    """Identity forward, gradient times k."""
    return x * k + x.detach() * (1 - k)


@dataclass(frozen=True)
class AGMSettings:
    alpha: float = 1.0  # strength of the modulation
    cap: Optional[float] = None  # bound on opt_m - ratio_m inside the exponential; None: 10 (N = 2) or 7 (N >= 3)
    modulation_start: int = 0
    modulation_end: int = 10**9
    conditional_clip: bool = True  # the reference: clip to norm 1 when a head-weight gradient entry exceeds 1

    def __post_init__(self):
        check("alpha", finite(self.alpha) and self.alpha >= 0, self.alpha, "a finite number >= 0")
        check("cap", self.cap is None or finite(self.cap) and self.cap > 0, self.cap, "a finite number > 0, or null")


class AGM(Strategy):
    label = "AGM"  # its row in `cli.py table`
    method = "AGM (ICCV 2023), with its conditional clip"
    summary = "Shapley over 2^N zero-masked coalitions, ratio exp(mean_{j≠m} s_j − s_m), cap 10 (N = 2) or 7 (N ≥ 3); clip to norm 1 when a head-weight gradient entry exceeds 1"
    checked = "`test_golden.py::test_agm_equals_the_reference`, `test_agm_three_modality_oracle`, `test_agm_conditional_clip_bounds_the_step_when_a_head_gradient_exceeds_one`"
    Settings = AGMSettings
    state = ("running", "iteration")  # saved in last.pt, restored on --resume
    counts = ("modulated_steps", "clipped_steps")
    idle_is_vanilla = True

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        n = len(model.modalities)
        self.cap = self.settings.cap if self.settings.cap is not None else (10.0 if n == 2 else 7.0)
        self.running = {m: 0.0 for m in model.modalities}
        self.iteration = 0
        self.last = [mod for mod in model.head.modules() if isinstance(mod, nn.Linear)][-1]  # the head's classifier

    def train_step(self, batch):
        feats = self.model.encode(batch)
        names = list(feats)
        # Only the full coalition is a real multimodal pass; the masked ones leave BN statistics alone.
        values = {s: (self.model.head if len(s) == len(names) else self.model.head_masked)(
                      self.model.mask_modalities(feats, s))
                  for s in coalitions(names)}
        contrib = shapley_contributions(values, names)
        with torch.no_grad():
            scores = {m: self.dist.mean(float(self.task.loss(c, batch.y))) for m, c in contrib.items()}
        modulate = self.settings.modulation_start <= self.epoch <= self.settings.modulation_end
        coeffs = agm_coefficients(scores, self.running, self.settings.alpha, self.cap) if modulate else {m: 1.0 for m in names}
        if any(c != 1.0 for c in coeffs.values()):
            self.act("modulated_steps")
        out = sum(_scale_grad(contrib[m], coeffs[m]) for m in names)
        loss = self.task.loss(out, batch.y)
        self.backward(loss)
        # the reference's conditional clip: when any entry of the head's last weight gradient exceeds
        # 1, every gradient is clipped to total norm 1 (it bounds the exponential coefficients)
        if self.settings.conditional_clip and self.last.weight.grad is not None \
                and float(self.last.weight.grad.abs().max()) > 1:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.act("clipped_steps")
        self.clip_and_step()
        # running means are updated after the coefficient is computed, as in the official code
        self.iteration += 1
        for m in names:
            self.running[m] += (scores[m] - self.running[m]) / self.iteration
        return {"loss": loss.item(), **{f"coeff_{m}": c for m, c in coeffs.items()}}
