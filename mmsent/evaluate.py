"""Scoring a model on a split: the full model ("multi") and every modality branch (the others
zeroed), in eval mode, for validation, test, predictions and the methods that weigh branches
(G-Blending's weights, valuation's per-sample values). Under torchrun each rank scores its
contiguous slice once and ``dist.gather`` puts the pieces back in order.

These are functions of a strategy, not its methods: a strategy changes what is scored only through
``predict`` (a unimodal-only model's test-time fusion, MLA's), which they call."""
from __future__ import annotations

import torch
from torch import Tensor

from mmsent.data.batch import EVAL_BATCH, Split
from mmsent.loop import autocast
from mmsent.models.model import evaluating


def my_batches(strategy, split, batch_size: int):
    """In order, the batches of this rank's contiguous slice of ``split`` (one process: all of
    it), on the strategy's device."""
    mine = strategy.dist.split_range(len(split))
    for start in range(mine.start, mine.stop, batch_size):
        yield split.batch(torch.arange(start, min(mine.stop, start + batch_size)), deferred=True).to(strategy.device)


def _keeps(strategy) -> dict:
    return {"multi": None, **{m: [m] for m in strategy.model.modalities}}


@torch.no_grad()
def branch_predictions(strategy, split, batch_size: int = EVAL_BATCH) -> dict[str, Tensor]:
    """``strategy.predict`` of the model ("multi") and of every modality branch over a whole
    split, in eval mode, on the CPU: what validation/test metrics and G-Blending's weights are
    made of."""
    keeps = _keeps(strategy)
    preds = {k: [] for k in keeps}
    with evaluating(strategy.model):
        for batch in my_batches(strategy, split, batch_size):
            for k, keep in keeps.items():
                preds[k].append(strategy.predict(batch, keep).float())
    # a rank with nothing to score (a split smaller than the world) still joins the gather
    empty = torch.zeros((0, strategy.task.out_dim), device=strategy.device)
    return {k: strategy.dist.gather(torch.cat(v) if v else empty).cpu() for k, v in preds.items()}


@torch.no_grad()
def branch_summaries(strategy, split, batch_size: int = EVAL_BATCH) -> dict[str, Tensor]:
    """For a task that scores a split from per-batch sums (``task.summary``: segmentation's loss
    sums and confusion counts), each branch's summary of the whole split, summed over batches and
    ranks; the predictions themselves are never held."""
    task = strategy.task
    keeps = _keeps(strategy)
    rows = {k: [] for k in keeps}
    with evaluating(strategy.model):
        for batch in my_batches(strategy, split, batch_size):
            for k, keep in keeps.items():
                rows[k].append(task.summary(strategy.predict(batch, keep), batch.y))
    width = len(task.summary(torch.zeros(1, task.out_dim, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long)))
    empty = torch.zeros((0, width), dtype=torch.float64)
    return {k: strategy.dist.gather((torch.stack(v) if v else empty).to(strategy.device)).cpu().sum(0)
            for k, v in rows.items()}


def evaluate(strategy, split: Split, task, batch_size: int, device, amp: bool = False) -> dict[str, dict[str, float]]:
    """Metrics of the full model ("multi") and of every modality branch (the others zeroed)."""
    return evaluate_with_predictions(strategy, split, task, batch_size, device, amp)[0]


def evaluate_with_predictions(strategy, split: Split, task, batch_size: int, device, amp: bool = False):
    """``evaluate``'s metrics and the branch predictions they were computed from (none for a
    task scored from per-batch sums, ``task.summary``: segmentation)."""
    if task.summed:
        with autocast(device, amp):
            sums = branch_summaries(strategy, split, batch_size)
        return {k: task.from_summary(s) for k, s in sums.items()}, None
    with autocast(device, amp):
        preds = branch_predictions(strategy, split, batch_size)
    return {k: {"loss": float(task.loss(p, split.y)), **task.metrics(p, split.y)} for k, p in preds.items()}, preds
