"""G-Blending: Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020), online, for N modalities.

The loss blends K = N + 1 branches, ``L = sum_k w_k L_k``: the fused prediction and each modality's
branch through the shared head with the others zeroed (the DGL paper's protocol). Every
``super_epoch`` epochs the weights are re-estimated from each branch's overfitting-to-generalisation
behaviour since the previous estimate (Sec. 3.3): ``dG_k = LV_prev - LV_now`` (positive when
generalising), ``dO_k = (LV_now - LT_now) - (LV_prev - LT_prev)``, ``w_k ∝ max(dG_k, 0) / dO_k^2``
(|dO| clamped at 1e-4), normalised to sum 1. Losses are per-sample means over the whole split.

Deviations, stated: the held-out set V is the validation split (never the test split, unlike
BalanceBenchmark), and the gains are measured on the model being trained rather than on
temporary copies trained for the estimate (the online variant at no extra training cost). A
branch that stopped generalising (dG <= 0) gets weight 0 instead of BalanceBenchmark's abs().
"""
from __future__ import annotations

from dataclasses import dataclass

from mmsent.config import check
from mmsent.strategies.base import Strategy

MULTI = "multi"


def blend_weights(prev: dict[str, tuple[float, float]], now: dict[str, tuple[float, float]], eps: float = 1e-4):
    """``prev``/``now``: branch -> (train loss, validation loss). Returns normalised weights, or
    None when no branch generalised."""
    raw = {}
    for k in now:
        (lt0, lv0), (lt1, lv1) = prev[k], now[k]
        gain = lv0 - lv1
        over = (lv1 - lt1) - (lv0 - lt0)
        raw[k] = max(gain, 0.0) / max(abs(over), eps) ** 2
    total = sum(raw.values())
    return None if total <= 0 else {k: v / total for k, v in raw.items()}


@dataclass(frozen=True)
class GBlendingSettings:
    super_epoch: int = 5  # epochs between weight re-estimates

    def __post_init__(self):
        check("super_epoch", self.super_epoch >= 1, self.super_epoch, ">= 1")


class GBlending(Strategy):
    Settings = GBlendingSettings

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.super_epoch = self.settings.super_epoch
        names = [MULTI, *model.modalities]
        self.weights = {k: 1.0 / len(names) for k in names}
        self.snapshot: dict[str, tuple[float, float]] | None = None

    def branch_losses(self, split) -> dict[str, float]:
        """Per-sample mean loss of the model and of each branch over ``split`` (eval mode)."""
        preds = self.branch_predictions(split)
        return {k: float(self.task.loss(preds[k], split.y)) for k in self.weights}

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        if epoch % self.super_epoch:
            return
        lt, lv = self.branch_losses(data.train), self.branch_losses(data.val)
        now = {k: (lt[k], lv[k]) for k in self.weights}
        if self.snapshot is not None:
            self.weights = blend_weights(self.snapshot, now) or self.weights
        self.snapshot = now

    def train_step(self, batch):
        feats = self.model.encode(batch)
        losses = {MULTI: self.task.loss(self.model.head(feats), batch.y),
                  **{m: self.task.loss(p, batch.y) for m, p in self.branches(feats).items()}}
        self.update(sum(self.weights[k] * v for k, v in losses.items()))
        return {"loss": losses[MULTI].item(), **{f"w_{k}": w for k, w in self.weights.items()}}

    def state_dict(self):
        return {**super().state_dict(), "weights": dict(self.weights), "snapshot": self.snapshot}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.weights, self.snapshot = dict(state["weights"]), state["snapshot"]
