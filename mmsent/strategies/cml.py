"""CML: Calibrating Multimodal Learning (Ma, Zhang, Zhang, Wu, Fu, Zhou & Hu, ICML 2023), for N modalities.

Reference followed: QingyangZhang/CML@9d2496e ``miwae/train.py`` (the official MIWAE form, any N),
as specified in shared ``docs/research/balancemm-methods.md`` §9.

Principle: a model's confidence ``Conf = max_c softmax(h(x))_c`` must not rise when modalities are
removed. Per step [source]:

1. every sample i draws a random order pi_i of the modalities; its nested chain is
   ``S_0 = M, S_k = M minus {pi_i(1), ..., pi_i(k)}``, k = 0 .. N-1 (removed modalities zeroed: the
   framework's masking, as BalanceBenchmark; the MIWAE code fills in the training mean);
2. ``L_cls = (1/N) sum_k CE(h(x^{S_k}), y)`` -- the reduced inputs are trained too;
3. ``L_rank = sum_k sum_i relu((Conf_i(S_{k+1}) - Conf_i(S_k)) g_ik - eps)
            + sum_k sum_i relu((Conf_i(S_{k+1}) - sg Conf_i(S_k)) u_ik - eps)``, k = 0 .. N-2,
   ``g_ik = 1[S_k's prediction is right]``, ``u_ik = 1[S_k and S_{k+1} both wrong]``, sg the stop
   gradient; a SUM over the samples (not a mean);
4. ``L = L_cls + (beta / 100) L_rank``, beta = 10, eps = 0.

The reference's batch is 200: the summed hinge weighs more in larger batches; ``beta`` can be
rescaled by the user for other batch sizes (not done silently). Reduced passes go through the head
without moving its BatchNorm statistics. [extension] Regression: the confidence is the closeness
to the label ``exp(-|pred - y|)`` and "right" is the Acc-2 sign class; any fusion head. At N = 2 the
chain is (full, one random modality), so each sample's reduced input is one of its two unimodal
branches, chosen at random.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmsent.checks import check, finite
from mmsent.strategies.base import Strategy, scale_samples


def confidence(task, pred: Tensor, y: Tensor) -> Tensor:
    """Per-sample confidence: max softmax probability (classification), ``exp(-|err|)`` (regression)."""
    if task.name == "classification":
        return pred.softmax(-1).max(-1).values
    return task.score(pred, y)


def nested_chain(u: Tensor) -> Tensor:
    """Removal rank of each modality per sample from uniform draws ``u`` (B, N): modality j is
    removed at step ``rank[i, j] + 1`` of sample i's chain (argsort of the draws: a uniform random
    order)."""
    return u.argsort(dim=1).argsort(dim=1)


def rank_penalty(conf: list[Tensor], right: list[Tensor], eps: float) -> Tensor:
    """``L_rank`` from the chain's per-sample confidences and hits, S_0 first."""
    total = conf[0].new_zeros(())
    for k in range(len(conf) - 1):
        g = right[k].to(conf[k].dtype)
        u = (~right[k] & ~right[k + 1]).to(conf[k].dtype)
        total = total + torch.relu((conf[k + 1] - conf[k]) * g - eps).sum()
        total = total + torch.relu((conf[k + 1] - conf[k].detach()) * u - eps).sum()
    return total


@dataclass(frozen=True)
class CMLSettings:
    beta: float = 10.0  # the ranking term's weight is beta / 100 (reference: 10)
    eps: float = 0.0  # hinge margin

    def __post_init__(self):
        check("beta", finite(self.beta) and self.beta >= 0, self.beta, "a finite number >= 0")
        check("eps", finite(self.eps) and self.eps >= 0, self.eps, "a finite number >= 0")


class CML(Strategy):
    label = "CML"  # its row in `cli.py table`
    method = "CML (ICML 2023), official MIWAE form"
    summary = "per sample a random nested chain S_0 = M ⊃ … ⊃ S_{N−1}; mean CE over the chain + β/100 · summed hinge (g- and u-masked, stop-gradient in the second)"
    checked = "`test_golden.py::test_cml_equals_the_reference`, `test_cml_rank_penalty_oracle_is_a_sum_with_both_masks`, `test_cml_step_is_chain_ce_plus_beta_over_100_summed_hinge`"
    Settings = CMLSettings

    def train_step(self, batch):
        s, mods = self.settings, self.model.modalities
        feats = self.model.encode(batch)
        order = nested_chain(self.dist.rand(len(batch.y), len(mods)).to(self.device))
        preds = [self.model.head(feats)]
        for k in range(1, len(mods)):  # S_k keeps modality j while its removal rank is >= k
            kept = {m: (order[:, j] >= k) for j, m in enumerate(mods)}
            # reduced passes: the head's BatchNorm statistics stay (masked passes never move them)
            preds.append(self.model.head_masked(scale_samples(feats, kept)))
        cls = sum(self.task.loss(p, batch.y) for p in preds) / len(preds)
        conf = [confidence(self.task, p, batch.y) for p in preds]
        right = [self.task.correct(p.detach(), batch.y) for p in preds]
        # a sum over samples: under torchrun each rank's sum is scaled back by its share of the batch,
        # so the all-reduced gradient is the global batch's sum
        rank = rank_penalty(conf, right, s.eps) / self.dist.weight
        self.update(cls + s.beta / 100 * rank)
        return {"loss": cls.item(), "cml": rank.item()}
