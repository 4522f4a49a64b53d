"""OPM: On-the-fly Prediction Modulation (Wei, Hu, Feng, Wang et al., "On-the-fly Modulation for
Balanced Multimodal Learning", IEEE TPAMI 2024, the journal extension of OGM-GE), for N modalities.

OGM-GE damps the dominant modality's *gradient*; OPM weakens its *prediction* instead: in the
feed-forward stage of training, the features of the dominant modality are dropped (zeroed) for a
random subset of the batch, with a probability that grows with how far that modality leads. Both
read the same discrepancy ratio. Per step:

    s_m   = sum_i Conf_m(x_i)                     (the modality's branch, others zeroed; as OGM-GE)
    rho_m = mean_{j != m} s_m / s_j                (s_a / s_v at N = 2: OGM-GE's N-modality ratio)
    p_m   = lambda * tanh(rho_m - 1)  if rho_m > 1, else 0
    drop_{i,m} ~ Bernoulli(p_m), independently per sample,
    L     = L_task(h(x_i with every dropped modality zeroed), y_i).

Nothing is rescaled (unlike dropout): the point is that the fused prediction leans less on the
dominant modality while the others keep their full gradient. Evaluation never drops.

Source note: only the paper's abstract was readable from this machine. The mechanism above (drop
the dominant modality's feature with a probability set by the discrepancy ratio, in the
feed-forward stage, training only) is the paper's; the probability's exact form is written in
OGM-GE's tanh family, bounded by ``lam`` (mmsent's reading, not checked against the paper).

N modalities: each modality with ``rho_m > 1`` is dropped on its own draw. The modality with the
lowest score always has ``rho <= 1`` (every ratio s_min / s_j <= 1), so the weakest is never dropped
and at N = 2 only the leader can be. Works with every fusion head (dropping is the framework's
zero-masking, applied per sample) and both tasks (regression's confidence is ``exp(-|err|)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from mmsent.config import check, finite
from mmsent.strategies.base import Strategy
from mmsent.strategies.ogm_ge import ogm_ratios


def drop_probabilities(scores: dict[str, float], lam: float) -> dict[str, float]:
    """``p_m = lam * tanh(rho_m - 1)`` for the modalities ahead (rho_m > 1), else 0."""
    return {m: lam * math.tanh(r - 1) if r > 1 else 0.0 for m, r in ogm_ratios(scores).items()}


def drop_samples(feats: dict[str, Tensor], dropped: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero modality m's features for the samples where ``dropped[m]`` (B,) is true: the framework's
    zero-masking rule, per sample instead of per batch."""
    out = dict(feats)
    for m, d in dropped.items():
        keep = (~d).to(feats[m].dtype).view(-1, *([1] * (feats[m].dim() - 1)))
        out[m] = feats[m] * keep
    return out


@dataclass(frozen=True)
class OPMSettings:
    lam: float = 0.5  # the largest drop probability (reached as rho -> infinity)
    modulation_start: int = 0  # first and last epoch of modulation
    modulation_end: int = 50

    def __post_init__(self):
        check("lam", finite(self.lam) and 0 <= self.lam <= 1, self.lam, "a number in [0, 1]")


class OPM(Strategy):
    Settings = OPMSettings

    def train_step(self, batch):
        s = self.settings
        feats = self.model.encode(batch)
        logs = {}
        if s.modulation_start <= self.epoch <= s.modulation_end:
            probs = drop_probabilities(self.branch_scores(feats, batch.y), s.lam)
            n = len(batch.y)
            # one draw per sample and modality, in a fixed modality order (reproducible, resumable)
            dropped = {m: self.dist.rand(n).to(self.device) < probs[m] for m in self.model.modalities}
            feats = drop_samples(feats, {m: d for m, d in dropped.items() if probs[m] > 0})
            logs.update({f"drop_p_{m}": p for m, p in probs.items()})
        loss = self.task.loss(self.model.head(feats), batch.y)
        self.update(loss)
        return {"loss": loss.item(), **logs}
