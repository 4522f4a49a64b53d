"""One epoch of training steps: the steps of a run's loop (``train.train``) and of the model copies
some strategies train on their own (UMT's teachers, G-Blending's estimates) are the same code, with
the same batches, autocast and non-finite-loss check."""
from __future__ import annotations

import math

import torch

from mmsent.checks import RunError, first_line


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast: no loss scaling is needed (unlike float16), so every strategy's own
    backward and gradient edits stay exact in their float32 master weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_epoch(strategy, split, generator: torch.Generator, *, amp: bool = False, label: str = "",
                before_step=None, after_step=None) -> dict[str, float]:
    """One pass of ``strategy.train_step`` over ``split``, shuffled by ``generator``, in the
    strategy's batch size (a last batch smaller than ``strategy.min_batch`` joins the one before);
    returns each logged value's sample-weighted mean. Under torchrun each rank steps on its shard
    and the logs are the whole batch's. ``before_step()`` runs before each step (a safe point),
    ``after_step()`` after it (a progress bar); ``label`` names the epoch in the non-finite error."""
    sums: dict[str, float] = {}
    strategy.model.train()
    device, dist, weigh = strategy.device, strategy.dist, strategy.task.batch_weight
    for step, batch in enumerate(split.batches(strategy.batch_size, shuffle=True, generator=generator,
                                               min_size=strategy.min_batch, deferred=True)):
        if before_step is not None:
            before_step()
        try:
            with autocast(device, amp):
                logs = dist.average_logs(strategy.train_step(dist.shard(batch, weigh).to(device, non_blocking=True)))
        except RuntimeError as e:  # torch's own overflow (a huge train.lr in Adam's float32 step): the same class
            if "overflow" not in str(e):
                raise
            raise RunError(f"numeric overflow in the training step at {label or 'an epoch'} step {step} "
                           f"({first_line(e)}); lower train.lr or set train.grad_clip") from None
        if not math.isfinite(logs["loss"]):
            raise RunError(f"non-finite training loss at {label or 'an epoch'} step {step}; lower train.lr or set "
                           "train.grad_clip")
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch)
        if after_step is not None:
            after_step()
    return {k: v / len(split) for k, v in sums.items()}
