"""AMCo: Adaptive Mask Co-optimization (Zhou, Liang, Zheng, Xuan & Kumada, "Adaptive Mask
Co-Optimization for Modal Dependence in Multimodal Learning", ICASSP 2023), for N modalities.

The paper's diagnosis: a multimodal model comes to depend on its dominant modality. AMCo masks
part of each modality's features during training, with a masking ratio that adapts to how
significant the modality currently is, so the model is made to use the others as well. Per step:

    s_m   = sum_i Conf_m(x_i)                       (the modality's branch, others zeroed)
    rho_m = mean_{j != m} s_m / s_j                  (s_a / s_v at N = 2)
    r_m   = r_max * tanh(sigma * (rho_m - 1))  if rho_m > 1, else 0
    every entry of modality m's features is zeroed with probability r_m, independently, and
    L = L_task(h(masked features), y).

Masking single entries removes a part of every sample's dominant-modality evidence, where OPM drops
the whole modality for some samples. (Masking whole tokens or map positions instead would make AMCo
OPM itself wherever an encoder emits one vector per sample, as the audio-visual ResNets here do.)
Nothing is rescaled, unlike dropout. Evaluation never masks.

N modalities: each modality ahead of the others on average (rho_m > 1) gets its own ratio; the
lowest-scoring modality is never masked. Any fusion head, both tasks (regression's confidence is
``exp(-|err|)``).

Source note: only the paper's abstract was readable from this machine. Masking partial features
with a ratio that adapts to each modality's significance follows it; measuring significance by the
branch-confidence ratio (as OGM-GE does), the tanh form of the ratio, its cap ``r_max`` and masking
feature entries (the paper masks parts of its inputs) are mmsent's reading, not checked against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from mmsent.config import check, finite
from mmsent.strategies.base import Strategy
from mmsent.strategies.ogm_ge import ogm_ratios


def mask_ratios(scores: dict[str, float], sigma: float, r_max: float) -> dict[str, float]:
    """``r_m = r_max * tanh(sigma * (rho_m - 1))`` for the modalities ahead, else 0."""
    return {m: r_max * math.tanh(sigma * (r - 1)) if r > 1 else 0.0 for m, r in ogm_ratios(scores).items()}


@dataclass(frozen=True)
class AMCoSettings:
    sigma: float = 1.0  # slope of the ratio in the significance lead
    r_max: float = 0.5  # the largest masking ratio

    def __post_init__(self):
        check("sigma", finite(self.sigma) and self.sigma >= 0, self.sigma, "a finite number >= 0")
        check("r_max", finite(self.r_max) and 0 <= self.r_max < 1, self.r_max, "a number in [0, 1)")


class AMCo(Strategy):
    Settings = AMCoSettings

    def train_step(self, batch):
        s = self.settings
        feats = self.model.encode(batch)
        ratios = mask_ratios(self.branch_scores(feats, batch.y), s.sigma, s.r_max)
        masked = {}
        for m in self.model.modalities:  # one draw per entry for every modality: a fixed RNG stream
            z = feats[m]
            keep = self.dist.rand(len(z), *z.shape[1:]).to(z.device) >= ratios[m]
            masked[m] = z * keep.to(z.dtype) if ratios[m] > 0 else z
        loss = self.task.loss(self.model.head(masked), batch.y)
        self.update(loss)
        return {"loss": loss.item(), **{f"mask_{m}": r for m, r in ratios.items()}}
