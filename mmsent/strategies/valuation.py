"""Sample-level modality valuation (Wei, Feng, Wang & Hu, "Enhancing Multimodal Cooperation via
Sample-level Modality Valuation", CVPR 2024), for N modalities: BalanceMM's data-level method.

Which modality a model under-uses differs from sample to sample. The paper values every modality
on every sample with the Shapley value of its marginal contributions to the sample's outcome, and
re-samples the low-contributing modality of each sample so that modality is trained more.

Valuation (at the start of every ``every``-th epoch, on the whole training split, eval mode): the
value of a coalition S of modalities on sample i is whether the model with only S kept (the others
zeroed, the framework's masking) gets the sample right,

    v_i(S) = 1[prediction_S(x_i) is correct],   v_i(empty) = 0,
    phi_i^m = sum_{S not holding m} |S|! (N - |S| - 1)! / N! * (v_i(S + m) - v_i(S)),

so ``sum_m phi_i^m = v_i(all)``. Regression (MOSI) counts a prediction correct when it has the
label's sign class (Acc-2, ``task.classes``).

Re-sampling: sample i's low-contributing modality is ``u_i = argmin_m phi_i^m``. The further it
falls below an even share of the sample's value, the more often it is re-sampled:

    s_i = min(K, ceil(K * (v_i(all) / N - phi_i^{u_i})))   (0 when at or above the even share).

A re-sampled copy feeds modality ``u_i`` alone (the others zeroed) through the shared head, so the
step's loss is ``(1/B) [sum_i l(h(x_i), y_i) + sum_i s_i * l(h(x_i^{u_i} only), y_i)]``: the batch
as if its s_i copies had been drawn with it (BatchNorm statistics untouched by the copies).

N modalities: the Shapley value above is exact over all 2^N coalitions (one masked head pass per
coalition; fine for the handful of modalities of multimodal data). At N = 2 it is the paper's
``phi^a = (v(a) + v(a, v) - v(v)) / 2``. Works with every fusion head and both tasks.

Source note: only the paper's abstract was readable from this machine. The sample-level Shapley
valuation with a correctness value and the targeted re-sampling of the low-contributing modality
follow it; the re-sampling frequency ``s_i`` (with its cap K, ``max_resample``) is mmsent's
monotone rule, not the paper's table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmsent.config import check
from mmsent.models.model import evaluating
from mmsent.strategies.agm import coalitions, shapley_contributions
from mmsent.strategies.base import Strategy


def sample_shapley(correct: dict[frozenset, Tensor], modalities: list[str]) -> dict[str, Tensor]:
    """Per-sample Shapley values from ``correct[S]`` (B,) in {0, 1} for every non-empty coalition."""
    like = next(iter(correct.values())).float()
    values = {S: correct[S].float() if S else torch.zeros_like(like) for S in coalitions(modalities)}
    return shapley_contributions(values, modalities)  # + v(empty)/N = 0


def resample_counts(phi: dict[str, Tensor], cap: int) -> tuple[Tensor, Tensor]:
    """(index of the low-contributing modality, re-sample count) per sample."""
    stacked = torch.stack(list(phi.values()), dim=1)  # (B, N)
    low, idx = stacked.min(dim=1)
    share = stacked.sum(dim=1) / stacked.shape[1]  # v(all) / N
    counts = torch.ceil(cap * (share - low) - 1e-9).clamp(0, cap).long()
    return idx, counts


@dataclass(frozen=True)
class ValuationSettings:
    every: int = 1  # re-value the training split every this many epochs
    max_resample: int = 2  # K: the most copies of one sample's low-contributing modality per epoch

    def __post_init__(self):
        check("every", self.every >= 1, self.every, "an integer >= 1")
        check("max_resample", self.max_resample >= 0, self.max_resample, "an integer >= 0")


class Valuation(Strategy):
    Settings = ValuationSettings

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        # per training sample, by position in the split: its low-contributing modality and copies
        self.low: Tensor | None = None
        self.copies: Tensor | None = None

    def correct(self, pred: Tensor, y: Tensor) -> Tensor:
        if self.task.name == "classification":
            return pred.argmax(-1) == y
        return self.task.classes(pred.reshape(-1)) == self.task.classes(y)

    @torch.no_grad()
    def value(self, split, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """Low-contributing modality and re-sample count of every sample of ``split``."""
        mods = self.model.modalities
        lows, counts = [], []
        with evaluating(self.model):
            for batch in self.my_batches(split, batch_size):  # torchrun: this rank's slice
                feats = self.model.encode(batch)
                correct = {S: self.correct(self.model.head(self.model.mask_modalities(feats, S)), batch.y)
                           for S in coalitions(mods) if S}
                low, n = resample_counts(sample_shapley(correct, mods), self.settings.max_resample)
                lows.append(low)
                counts.append(n)
        # every rank gets the whole split's plan, in order (a rank with no slice still joins)
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        return tuple(self.dist.gather(torch.cat(v) if v else empty).cpu() for v in (lows, counts))

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        if epoch % self.settings.every == 0:
            self.low, self.copies = self.value(data.train)

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss = self.task.loss(self.model.head(feats), batch.y)
        extra, n = loss.new_zeros(()), 0
        if self.copies is not None:
            if batch.index is None:  # a batch built by hand in a user's own loop
                raise ValueError("valuation keys its re-sampling plan by batch.index (positions in the training "
                                 "split); build batches with Split.batch or pass index=")
            pos = batch.index.cpu()  # positions in the training split (ids may repeat in a user's data)
            low, copies = self.low[pos], self.copies[pos]
            for k, m in enumerate(self.model.modalities):
                rows = torch.nonzero((low == k) & (copies > 0)).flatten()
                if len(rows) == 0:
                    continue
                idx = rows.repeat_interleave(copies[rows]).to(batch.y.device)
                # the branch over the whole batch, then its re-sampled rows: a head with train-mode
                # BatchNorm (MMTM) cannot normalise a single copy, and a copy is the same sample's
                # branch as in any batch of it (for heads without BatchNorm both are the same)
                pred = self.branches(feats, [m])[m][idx]
                extra = extra + self.task.loss(pred, batch.y[idx]) * len(idx) / len(batch.y)
                n += len(idx)
        self.update(loss + extra)
        return {"loss": loss.item(), "resampled": n / len(batch.y)}

    def state_dict(self):
        return {**super().state_dict(), "low": self.low, "copies": self.copies}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.low, self.copies = state["low"], state["copies"]
