"""G-Blending: Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020), for N modalities.

The loss blends K = N + 1 branches, ``L = sum_k w_k L_k``: the fused prediction and each modality's
branch through the shared head with the others zeroed (the DGL paper's protocol). The weights come
from each branch's overfitting-to-generalisation behaviour, the paper's GB-Estimate (Sec. 3.3,
Algorithms 1-2; shared docs/research/baselines.md §3): from the current checkpoint, a TEMPORARY
COPY of the model is trained for ``super_epoch`` epochs on each branch's own loss alone (the fused
loss for "multi", modality m's branch loss for m), and with per-sample mean losses over the whole
splits measured before (the checkpoint) and after (the copy),

    dG_k = LV_before - LV_after                (positive when the branch generalises)
    dO_k = (LV_after - LT_after) - (LV_before - LT_before)
    w_k  ∝ max(dG_k, 0) / max(|dO_k|, 1e-4)^2, normalised to sum 1.

``estimate``: "online" (default, the paper's online G-Blend) re-estimates at the start of every
super-epoch; "offline" estimates once, from the initial checkpoint, and keeps those weights;
"inplace" is mmsent's cheap variant, not the paper's: no copies, the statistics are read off the
model being trained between two super-epochs (a branch that gets a low weight learns little and
keeps a low weight -- a feedback loop the paper's copies do not have). The copies cost (N + 1) x
``super_epoch`` extra epochs per estimate: online G-Blending trains about N + 2 times as long as
vanilla.

Each copy's optimizer is built from the run's parameter groups as they stand at that epoch (their
current learning rates, after a step schedule or with BERT's own rate; ``Strategy.copy_optimizer``),
its momentum empty.

Reference: there is no official PyTorch code (the original is Caffe2); MultiBench's
``training_structures/gradient_blend.py::gb_estimate`` with its ``delta = True`` (the Delta-form)
is run by ``tests/test_golden.py::test_gblending_estimate_equals_the_reference``: the same branch
losses before and after every copy trains, and the same weights, on a linear concat head whose
zero-masked branches are MultiBench's unimodal classifiers (``W_m f_m + b``).

Deviations, stated: the held-out set V is the validation split (never the test split, unlike
BalanceBenchmark; MultiBench holds out the first 8 % of train), and each branch's copy trains
through the shared head with the others zeroed rather than a separate unimodal head. A branch that
stopped generalising (dG <= 0) gets weight 0 instead of MultiBench's and BalanceBenchmark's abs(),
and |dO| is clamped at 1e-4 (MultiBench's Delta-form has no clamp). The copies' shuffling is seeded
from the run's RNG, so a resumed run equals an uninterrupted one; under torchrun the copies train on
each rank's shards. Counted: ``estimates`` (weights estimated and applied).

What comes from where: [source] (the paper, Sec. 3.3; MultiBench's ``gb_estimate``) one temporary
copy per branch trained from the checkpoint on its own loss, the before/after train and held-out
losses, w proportional to dG / dO^2 normalised, online re-estimates every super-epoch. [extension]
N + 1 branches for N > 2 modalities, the zero-masked branch through the shared head as each
unimodal model, the validation split as V, max(dG, 0) and the 1e-4 clamp, the ``inplace`` variant.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from mmsent.checks import check
from mmsent.evaluate import branch_predictions
from mmsent.strategies.base import Joint, OneModality, Strategy

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
    super_epoch: int = 5  # epochs between weight re-estimates, and each estimate's training length
    estimate: str = "online"  # online | offline (the paper's GB-Estimate on copies) | inplace (mmsent's)

    def __post_init__(self):
        check("super_epoch", self.super_epoch >= 1, self.super_epoch, ">= 1")
        check("estimate", self.estimate in ("online", "offline", "inplace"), self.estimate,
              "'online', 'offline' or 'inplace'")


class GBlending(Strategy):
    label = "G-Blending"  # its row in `cli.py table`
    method = "G-Blending (CVPR 2020), the paper's GB-Estimate, online (`estimate: offline` once; `inplace`: mmsent's no-copy variant)"
    summary = "every super-epoch, one temporary copy per branch (N + 1) trained from the checkpoint on its own loss; w_k ∝ max(ΔG, 0)/ΔO² (held-out = validation)"
    checked = "`test_golden.py::test_gblending_estimate_equals_the_reference`, `test_gblending_weights_oracle`, `test_gblending_copies_train_at_the_live_learning_rate`"
    short_run = {"super_epoch": 1}  # its between-epoch work happens within two epochs
    Settings = GBlendingSettings
    state = ("weights", "snapshot")  # saved in last.pt, restored on --resume
    counts = ("estimates",)

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        names = [MULTI, *model.modalities]
        self.weights = {k: 1.0 / len(names) for k in names}
        self.snapshot: dict[str, tuple[float, float]] | None = None

    def branch_losses(self, split, strategy: Strategy | None = None) -> dict[str, float]:
        """Per-sample mean loss of the model and of each branch over ``split`` (eval mode)."""
        preds = branch_predictions(strategy or self, split)
        return {k: float(self.task.loss(preds[k], split.y)) for k in self.weights}

    def gb_estimate(self, data) -> dict[str, float] | None:
        """The paper's GB-Estimate from the current checkpoint: one temporary copy per branch."""
        before = {k: (t, v) for (k, t), v in zip(self.branch_losses(data.train).items(),
                                                  self.branch_losses(data.val).values())}
        after = {}
        for k in self.weights:
            model = copy.deepcopy(self.model)
            optimizer = self.copy_optimizer(model)
            trainer = (Joint(model, optimizer, self.task, grad_clip=self.grad_clip, **self.loop()) if k == MULTI else
                       OneModality(model, optimizer, self.task, grad_clip=self.grad_clip, modality=k, **self.loop()))
            self.train_copy(trainer, data, self.settings.super_epoch)
            after[k] = (self.branch_losses(data.train, trainer)[k], self.branch_losses(data.val, trainer)[k])
        return blend_weights(before, after)

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        mode = self.settings.estimate
        if mode == "offline" and epoch == 0 or mode == "online" and epoch % self.settings.super_epoch == 0:
            new = self.gb_estimate(data)
            if new is not None:
                self.weights = new
                self.act("estimates")
            return
        if mode != "inplace" or epoch % self.settings.super_epoch:
            return
        lt, lv = self.branch_losses(data.train), self.branch_losses(data.val)
        now = {k: (lt[k], lv[k]) for k in self.weights}
        if self.snapshot is not None:
            new = blend_weights(self.snapshot, now)
            if new is not None:
                self.weights = new
                self.act("estimates")
        self.snapshot = now

    def train_step(self, batch):
        feats = self.model.encode(batch)
        losses = {MULTI: self.task.loss(self.model.head(feats), batch.y),
                  **{m: self.task.loss(p, batch.y) for m, p in self.branches(feats).items()}}
        self.update(sum(self.weights[k] * v for k, v in losses.items()))
        return {"loss": losses[MULTI].item(), **{f"w_{k}": w for k, w in self.weights.items()}}
