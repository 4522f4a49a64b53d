"""Sample-level modality valuation (Wei, Feng, Wang & Hu, "Enhancing Multimodal Cooperation via
Sample-level Modality Valuation", CVPR 2024), for N modalities: BalanceMM's data-level method.

Reference followed: the authors' ``code/sample_level.py`` and ``code/datasets/dataloader.py``
(GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation@7ed12b0), with BalanceBenchmark's
N-modality Shapley (``evaluation/modalitys.py``), as specified in shared
``docs/research/balancemm-methods.md`` §1.

[source] Schedule: the first ``warmup`` epochs (5) are plain joint training. From then on, before
every epoch the whole training split is valued (eval mode, no gradient) and the epoch trains on
the original samples plus re-sampled copies.

[source] Value of coalition S on sample i: ``v_i(S) = |S| * 1[prediction from S is right]``,
``v_i(empty) = 0`` (the reference scores the two-modality model 2 and each branch 1); the Shapley
value ``phi_i^m = sum_{S not holding m} |S|! (N-|S|-1)! / N! (v_i(S+m) - v_i(S))``, so
``sum_m phi_i^m = v_i(all)`` and an even share is 1 at every N. At N = 2 it is
``phi^a = (v(a) + v(a,v) - v(v)) / 2``, in {-0.5, 0, 0.5, 1, 1.5}.

[source] Copies: for EVERY sample and EVERY modality, ``c(phi) = 3 if phi < -0.1, 2 if
-0.1 < phi < 0.4, 1 if 0.4 < phi < 1, else 0`` (the boundaries and phi >= 1 give 0). A copy of
(i, m) is sample i with every modality but m zeroed, with its label.

[extension, the spec's allowed approximation] Instead of enlarging the dataset, each batch adds its
samples' copies to the loss: ``(1/B) [sum_i l(h(x_i), y_i) + sum_i sum_m c_i^m l(h(x_i^m only), y_i)]``,
the expected weight every copy has in the reference's enlarged epoch. What this gives up: a copy's
own augmentation draw and the extra optimizer steps of the longer epoch. Copies go through the
head without moving its BatchNorm statistics (a copy is the row of the batch's masked pass, so a
head with train-mode BatchNorm never normalises a single copy).

[extension] N > 2: the Shapley value is exact over all 2^N coalitions (one masked head pass each).
Regression (MOSI): "right" is the label's Acc-2 sign class (``task.correct``). Any fusion head.

``tests/test_golden.py::test_valuation_equals_the_reference`` checks the per-sample contributions
and the copy counts against numbers recorded from the reference's ``execute_modulation`` and its
dataset class (the training on the enlarged epoch is the approximation above, not compared). At the
pinned commit the reference's ``execute_modulation`` cannot build its enlarged dataset (it passes a
``loader`` keyword the class does not take). Schedule: the warm-up is the reference's 5 of its 60
epochs, scaled to the run's budget when ``warmup`` is left at None. Counted: ``valuations`` (epochs
planned by a valuation) and ``copies`` (copies trained).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from mmsent.checks import check
from mmsent.data.batch import EVAL_BATCH
from mmsent.evaluate import my_batches
from mmsent.models.model import evaluating
from mmsent.strategies.base import Strategy
from mmsent.strategies.shapley import coalitions, shapley_contributions


def sample_shapley(correct: dict[frozenset, Tensor], modalities: list[str]) -> dict[str, Tensor]:
    """Per-sample Shapley values from ``correct[S]`` (B,) in {0, 1} for every non-empty coalition,
    with the reference's coalition value ``|S| * correct``."""
    like = next(iter(correct.values())).float()
    values = {S: len(S) * correct[S].float() if S else torch.zeros_like(like) for S in coalitions(modalities)}
    return shapley_contributions(values, modalities)  # + v(empty)/N = 0


def copy_counts(phi: Tensor) -> Tensor:
    """The reference's table: 3 / 2 / 1 / 0 copies for phi < -0.1, < 0.4, < 1, otherwise; exact
    boundaries give 0 (strict inequalities on both sides, as the reference's if-chain)."""
    counts = torch.zeros_like(phi, dtype=torch.long)
    counts[phi < -0.1] = 3
    counts[(phi > -0.1) & (phi < 0.4)] = 2
    counts[(phi > 0.4) & (phi < 1)] = 1
    return counts


@dataclass(frozen=True)
class ValuationSettings:
    warmup: Optional[int] = None  # W: epochs of plain joint training first; None: the reference's 5 of 60, scaled

    def __post_init__(self):
        check("warmup", self.warmup is None or self.warmup >= 0, self.warmup,
              "an integer >= 0, or null for the reference's share of the run")


class Valuation(Strategy):
    label = "Sample-level"  # its row in `cli.py table`
    method = "Sample-level modality valuation (CVPR 2024), official code"
    summary = "5 warm-up epochs; each epoch every sample's every modality valued (Shapley, v(S) = \\|S\\|·correct) and copied 3/2/1/0 times by the reference's table; copies weighted into the batch loss"
    checked = "`test_golden.py::test_valuation_equals_the_reference`, `test_valuation_copy_counts_for_the_specs_five_cases`, the step test"
    short_run = {"warmup": 1}  # its between-epoch work happens within two epochs
    Settings = ValuationSettings
    state = ("copies",)  # saved in last.pt, restored on --resume
    counts = ("valuations", "copies")
    idle_is_vanilla = True
    reference_epochs = 60

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.warmup = self.scheduled("warmup", 5)
        # per training sample, by position in the split: copies per modality (N columns), or None
        self.copies: Tensor | None = None

    @torch.no_grad()
    def value(self, split, batch_size: int = EVAL_BATCH) -> Tensor:
        """(len(split), N) copies of every sample's every modality, in modality order."""
        mods = self.model.modalities
        counts = []
        with evaluating(self.model):
            for batch in my_batches(self, split, batch_size):  # torchrun: this rank's slice
                feats = self.model.encode(batch)
                correct = {S: self.task.correct(self.model.head(self.model.mask_modalities(feats, S)), batch.y)
                           for S in coalitions(mods) if S}
                phi = sample_shapley(correct, mods)
                counts.append(torch.stack([copy_counts(phi[m]) for m in mods], dim=1))
        # every rank gets the whole split's plan, in order (a rank with no slice still joins)
        empty = torch.zeros((0, len(mods)), dtype=torch.long, device=self.device)
        return self.dist.gather(torch.cat(counts) if counts else empty).cpu()

    def on_epoch_start(self, epoch, data):
        super().on_epoch_start(epoch, data)
        if epoch >= self.warmup:  # the model after epoch t - 1 plans epoch t
            self.copies = self.value(data.train)
            self.act("valuations")

    def train_step(self, batch):
        feats = self.model.encode(batch)
        loss = self.task.loss(self.model.head(feats), batch.y)
        extra, n = loss.new_zeros(()), 0
        if self.copies is not None:
            if batch.index is None:  # a batch built by hand in a user's own loop
                raise ValueError("valuation keys its re-sampling plan by batch.index (positions in the training "
                                 "split); build batches with Split.batch or pass index=")
            copies = self.copies[batch.index.cpu()]  # positions in the training split
            for k, m in enumerate(self.model.modalities):
                c = copies[:, k].to(batch.y.device)
                if int(c.sum()) == 0:
                    continue
                # the modality's branch over the whole batch, each row weighted by its copies
                per = self.task.per_sample(self.branches(feats, [m])[m], batch.y)
                extra = extra + (c.to(per.dtype) * per).sum() / len(batch.y)
                n += int(c.sum())
        self.update(loss + extra)
        self.act("copies", int(self.dist.sum(float(n))))
        return {"loss": loss.item(), "resampled": n / len(batch.y)}
