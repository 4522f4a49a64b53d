"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

Reference followed: GeWu-Lab/OGM-GE_CVPR2022 ``main.py`` (shared docs/research/baselines.md §4).

Per step: the multimodal loss alone is back-propagated; each modality's score is the sum over the
batch of its confidence in the truth (softmax of the true class; for regression ``exp(-|err|)``,
see ``Regression.score``). ``score="bias_share"`` (default) takes the reference's unimodal logits
``W_m f_m + b/N`` (b/2 at N = 2) wherever the head has per-modality logits (linear concat and the
late-fusion heads, ``Strategy.unimodal_logits``) and the zero-masked branch of the shared head
elsewhere (the mixer, MMTM: the only branch they have); ``score="masked"`` always takes the
zero-masked branch, which on a linear concat head is ``W_m f_m + b`` (full bias). The
discrepancy ratio of modality m for N modalities is the mean pairwise ratio (maintainer's
suggestion, GeWu-Lab/OGM-GE issue #16), ``rho_m = mean_{j != m} s_m / s_j``, which is ``s_a / s_v`` at
N = 2. Every modality with ``rho_m > 1`` is damped by ``k_m = 1 - tanh(alpha * rho_m)`` (Eq. 10; the
released code's form, note the jump at rho = 1). GE adds ``N(0, std(g))`` noise to every modulated
tensor, also where k = 1.

Parameters are selected by module (``model.encoders[m]``), never by name; all encoder tensors with
more than one dimension are modulated (the maintainer's advice for non-conv encoders, GeWu-Lab/OGM-GE issue #22).

What comes from where: [source] (OGM-GE_CVPR2022 ``main.py``) the multimodal loss alone, the score
as a sum of true-class probabilities of ``W_m f_m + b/2``, ``1 - tanh(alpha * rho)`` for the leading
modality, the GE noise with the unmodulated gradient's std, the modulation window (epochs 0-50).
[extension] N > 2 (the pairwise-mean ratio, every modality with rho > 1 damped), heads without
per-modality logits (the zero-masked branch), regression's score ``exp(-|err|)``, the tensors
modulated (every encoder tensor of 2+ dimensions, not only 4-D kernels: the maintainer's advice for
fc layers, issue #22).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy, ogm_ratios


def ogm_coefficients(scores: dict[str, float], alpha: float) -> dict[str, float]:
    return {m: (1 - math.tanh(alpha * r)) if r > 1 else 1.0 for m, r in ogm_ratios(scores).items()}


@dataclass(frozen=True)
class OGMGESettings:
    alpha: float = 0.3  # Eq. 10's tanh slope
    modulation_start: int = 0  # first and last epoch of modulation
    modulation_end: int = 50
    noise: bool = True  # GE: Gaussian noise with the gradient's std
    score: str = "bias_share"  # unimodal logits for the scores: bias_share (W_m f_m + b/N) or masked

    def __post_init__(self):
        check("alpha", finite(self.alpha) and self.alpha >= 0, self.alpha, "a finite number >= 0")
        check("score", self.score in ("bias_share", "masked"), self.score, "'bias_share' or 'masked'")


class OGMGE(Strategy):
    label = "OGM_GE"  # its row in `cli.py table`
    method = "OGM-GE (CVPR 2022); scores from W_m f_m + b/N where the head has per-modality logits (`score: masked` for the zero-masked branch)"
    summary = "ρ_m = mean_{j≠m} s_m/s_j, every ρ_m > 1 damped by 1 − tanh(αρ_m), GE noise N(0, std(g)²)"
    checked = "`test_golden.py::test_ogm_ge_equals_the_reference_train_epoch`, `test_ogm_two_modality_oracle`, `test_ogm_ge_noise_has_zero_mean_and_the_unmodulated_gradients_std`"
    Settings = OGMGESettings

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss = self.task.loss(self.model.head(feats), batch.y)
        self.backward(loss)
        logs = {"loss": loss.item()}
        if self.settings.modulation_start <= self.epoch <= self.settings.modulation_end:
            # sums over the whole global batch (under torchrun: over every rank's shard)
            detached = {m: f.detach() for m, f in feats.items()}
            with torch.no_grad():
                logits = self.unimodal_logits(detached) if self.settings.score == "bias_share" else None
            coeffs = ogm_coefficients(self.branch_scores(feats, batch.y, logits), self.settings.alpha)
            for m, k in coeffs.items():
                for p in self.model.encoders[m].parameters():
                    if p.grad is None or p.grad.dim() < 2:
                        continue
                    g = p.grad
                    std = g.std() if g.numel() > 1 else torch.zeros(())
                    p.grad = g * k + (torch.randn_like(g) * (std + 1e-8) if self.settings.noise else 0)
                logs[f"coeff_{m}"] = k
        self.clip_and_step()
        return logs
