"""OPM: On-the-fly Prediction Modulation (Wei, Hu, Feng, Wang et al., "On-the-fly Modulation for
Balanced Multimodal Learning", IEEE TPAMI 2024, the journal extension of OGM-GE), for N modalities.

Reference followed: GeWu-Lab/BML_TPAMI2024@4b3aa4f ``code/models/Classifier.py``, ``code/main.py``
and ``code/scripts/train_opm.sh`` (shared ``docs/research/balancemm-methods.md`` §2).

OGM-GE damps the dominant modality's gradient; OPM weakens its *prediction*: in the feed-forward
stage, the dominant modality's features are dropped for random samples, with a probability that
grows with its lead. Per step, from epoch ``warmup + 1`` on ([source]: no modulation in epochs 0-5):

    s_m   = sum_i Conf_m(x_i)                         (the branch's confidence in the truth)
    rho_m = s_a / s_v at N = 2                       [source]; mean_{j != m} s_m / s_j  [extension]
    q_m   = min(1, q_base (1 + lambda tanh(rho_m - 1)))  if rho_m > 1, else 0   [source]
    with probability p_exe (one draw per step)                                  [source]:
        keep_{i,m} ~ Bernoulli(1 - q_m) per sample and modality,
        theta  = sum_m d_m q_m / sum_m d_m          (d_m: features per sample of modality m)
        f_{i,m} <- keep_{i,m} f_{i,m} / (1 - theta)  for EVERY modality (the reference's straight
                                                      scaling, which the backward pass carries too)
        samples whose every modality was dropped leave the loss (cannot happen at N = 2)
    L = L_task(h(f), y).

A modality that leads by any margin is dropped with probability >= q_base (the step at rho = 1 is
the reference's). Evaluation never drops or scales.

Defaults [source, Kinetics-Sounds script]: q_base 0.5, lambda 0.5, p_exe 0.7, warm-up 5 epochs
(epochs 0-5 plain; of its 100, scaled to the run's budget when ``warmup`` is left at None).
Scores [source]: from the reference's unimodal logits ``W_m f_m + b/N`` (b/2 at N = 2, detached
head weights) wherever the head has per-modality logits (``Strategy.unimodal_logits``: a linear
concat head, the late-fusion heads), the zero-masked branch elsewhere (the mixer, MMTM).
``tests/test_golden.py::test_opm_equals_the_reference`` runs a warm-up and a modulated epoch against
numbers recorded from the reference's ``train`` and ``Classifier`` (its draws replayed). [extension]
N > 2 uses OGM-GE's N-modality ratio (the weakest modality always has rho <= 1 and is never
dropped); regression's confidence is ``exp(-|err|)``; any fusion head (sequence features: the whole
sequence of a dropped sample is zeroed). Under torchrun the scores, the draws and the loss's count
of kept samples are global. Counted: ``modulated_steps`` (the gate drew a modulation) and
``dropped`` (sample-modality pairs dropped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy, ogm_ratios, scale_samples


def drop_probabilities(scores: dict[str, float], q_base: float, lam: float) -> dict[str, float]:
    """``q_m = min(1, q_base (1 + lam tanh(rho_m - 1)))`` for the modalities ahead, else 0."""
    return {m: min(1.0, q_base * (1 + lam * math.tanh(r - 1))) if r > 1 else 0.0
            for m, r in ogm_ratios(scores).items()}


def rescale(probs: dict[str, float], widths: dict[str, int]) -> float:
    """``1 / (1 - theta)``, theta the width-weighted mean drop probability."""
    theta = sum(widths[m] * q for m, q in probs.items()) / sum(widths.values())
    return 1.0 / (1.0 - theta) if theta < 1 else 1.0


@dataclass(frozen=True)
class OPMSettings:
    q_base: float = 0.5  # the least drop probability of a leading modality (reference script: 0.5)
    lam: float = 0.5  # lambda: how much more a larger lead drops
    p_exe: float = 0.7  # probability that a step modulates at all
    warmup: Optional[int] = None  # epochs 0..warmup are plain training; None: the reference's 5 of 100, scaled
    modulation_end: int = 1_000_000  # last modulated epoch (the reference modulates to the end)

    def __post_init__(self):
        check("q_base", finite(self.q_base) and 0 <= self.q_base <= 1, self.q_base, "a number in [0, 1]")
        check("lam", finite(self.lam) and self.lam >= 0, self.lam, "a finite number >= 0")
        check("p_exe", finite(self.p_exe) and 0 <= self.p_exe <= 1, self.p_exe, "a number in [0, 1]")
        check("warmup", self.warmup is None or self.warmup >= -1, self.warmup,
              "an integer >= -1 (-1: modulate from epoch 0), or null for the reference's share of the run")


class OPM(Strategy):
    label = "OPM"  # its row in `cli.py table`
    method = "OPM (TPAMI 2024), official code"
    summary = "from epoch 6, with probability 0.7 per step: drop modality m per sample with q_m = min(1, 0.5(1 + 0.5 tanh(ρ_m − 1))) if ρ_m > 1, all features × 1/(1 − θ)"
    checked = "`test_golden.py::test_opm_equals_the_reference`, `test_opm_drop_probability_oracle`, `test_opm_gate_and_warmup`"
    short_run = {"warmup": -1, "p_exe": 1.0}  # its between-epoch work happens within two epochs
    Settings = OPMSettings
    counts = ("modulated_steps", "dropped")
    idle_is_vanilla = True
    reference_epochs = 100

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.warmup = self.scheduled("warmup", 5)

    def train_step(self, batch):
        s = self.settings
        feats = self.model.encode(batch)
        logs = {}
        weights = None  # per-sample loss weights when samples are discarded
        if self.warmup < self.epoch <= s.modulation_end:
            with torch.no_grad():
                logits = self.unimodal_logits({m: f.detach() for m, f in feats.items()})
            probs = drop_probabilities(self.branch_scores(feats, batch.y, logits), s.q_base, s.lam)
            logs.update({f"drop_p_{m}": p for m, p in probs.items()})
            # fixed draw order (the gate, then every modality's samples): reproducible and resumable,
            # and under torchrun every rank draws the same gate and its rows of the global draws
            execute = float(torch.rand(())) < s.p_exe
            draws = {m: self.dist.rand(len(batch.y)).to(self.device) for m in self.model.modalities}
            if execute:
                widths = {m: math.prod(f.shape[1:]) for m, f in feats.items()}
                scale = rescale(probs, widths)
                keep = {m: (draws[m] >= probs[m]).to(feats[m].dtype) for m in self.model.modalities}
                feats = scale_samples(feats, {m: k * scale for m, k in keep.items()})
                alive = sum(keep.values()) > 0  # at least one modality left
                weights = alive.to(feats[self.model.modalities[0]].dtype)
                logs["scale"] = scale
                self.act("modulated_steps")
                self.act("dropped", int(self.dist.sum(float(sum((1 - k).sum() for k in keep.values())))))
        pred = self.model.head(feats)
        if weights is None:
            loss = self.task.loss(pred, batch.y)
        else:  # the mean over the global batch's surviving samples
            total, kept = self.dist.sum(float(len(batch.y))), self.dist.sum(float(weights.sum()))
            loss = (weights * self.task.per_sample(pred, batch.y)).mean() * (total / max(kept, 1.0))
        self.update(loss)
        return {"loss": loss.item(), **logs}
