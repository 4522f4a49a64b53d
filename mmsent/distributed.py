"""Data parallelism under ``torchrun`` for strategies that own their backward pass.

``torch.nn.parallel.DistributedDataParallel`` averages gradients inside ``backward()``; mmsent's
strategies call ``autograd.grad`` per loss (MMPareto), edit gradients between backward and step
(OGM-GE, MLA), step several times per batch (MLA) or compute per-batch statistics (OGM-GE's and
PMR's scores, AGM's Shapley losses, MLA's projector input). So the reduction is explicit instead,
at exactly the points where a one-process run would have the whole batch:

* every rank holds the whole model and data and iterates the same global batches (same seed, same
  generator); ``shard`` gives each rank a contiguous slice and its weight ``w_r = n_r / N``;
* a strategy's losses are means over its shard (over samples; over labelled pixels for segmentation,
  where ``w_r`` is the shard's share of them), so ``sum_r w_r * (shard mean)`` is the global mean:
  ``grads`` / ``sync_grads`` scale every gradient by ``w_r`` and all-reduce the sum; ``mean`` does the
  same for a statistic (a mean over samples), ``sum`` adds one (a sum over samples);
* evaluation shards each split and gathers the predictions in order, so every sample is scored
  exactly once and every rank sees the same metrics (and makes the same early-stopping choice).

With one process every operation is the identity (no scaling, no copy), so a one-process run is
bit-for-bit what it was. Not synchronised: BatchNorm statistics of a training pass are per shard
(ResNet encoders, MMTM head) and dropout masks are drawn per shard, so runs with either are
equivalent in distribution, not bitwise; DGL-MH's ``fill=mean`` takes its shard's mean.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from mmsent.checks import ConfigError
from mmsent.data.batch import Batch


class Dist:
    """The process group as the training loop and strategies see it (one process: all identities)."""

    def __init__(self):
        # under torchrun the collectives run whatever the world size (one rank: each is an exact
        # identity, and `torchrun --nproc_per_node 1` exercises nccl on a single GPU); without it, none
        self.active = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0
        self.weight = 1.0  # this rank's share of the current global batch
        self.index: Tensor | None = None  # this rank's rows of the current global batch (None: all)
        self.global_size = 0  # the current global batch's size (set by shard)
        # where collective buffers live: nccl reduces CUDA tensors only, gloo CPU ones
        nccl = self.active and dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Batch, weigh=None) -> Batch:
        """This rank's contiguous slice of a global batch (sizes differ by at most one). Its weight
        is its share of what the task's mean loss divides by (``weigh(y)``: the task's
        ``batch_weight``; samples by default, labelled pixels for segmentation, whose shards hold
        different numbers of them), so ``sum_r w_r * (shard mean)`` is the global mean."""
        if not self.active:
            return batch
        n = self.global_size = len(batch.y)
        if n < self.world:
            raise RuntimeError(f"a batch of {n} sample(s) cannot be split over {self.world} ranks")
        idx = torch.tensor_split(torch.arange(n), self.world)[self.rank]
        total = float(weigh(batch.y)) if weigh is not None else float(n)
        mine = float(weigh(batch.y[idx])) if weigh is not None else float(len(idx))
        self.weight, self.index = (mine / total if total > 0 else len(idx) / n), idx
        return batch.select(idx)

    def rand(self, n: int, *shape: int) -> Tensor:
        """U(0, 1) draws of ``shape`` for each of the ``n`` samples of this rank's shard. Under
        torchrun every rank draws the whole global batch's numbers (same seed, same stream) and
        keeps its rows, so each sample gets the numbers it gets in one process."""
        if self.index is None:
            return torch.rand(n, *shape)
        return torch.rand(self.global_size, *shape)[self.index]

    def grads(self, tensors) -> None:
        """In place: ``g <- sum_r w_r g_r`` for every tensor (None skipped): shard-mean gradients
        become the gradient of the global mean, identical on every rank."""
        if not self.active:
            return
        for g in tensors:
            if g is not None:
                g.mul_(self.weight)
                dist.all_reduce(g)

    def sync_grads(self, params) -> None:
        self.grads([p.grad for p in params])

    def mean(self, x):
        """``sum_r w_r x_r``: the global value of a per-sample mean (float or tensor)."""
        return self._reduce(x, self.weight)

    def sum(self, x):
        """``sum_r x_r``: the global value of a sum over samples (float or tensor)."""
        return self._reduce(x, 1.0)

    def _reduce(self, x, scale: float):
        if not self.active:
            return x
        t = torch.as_tensor(x, dtype=torch.float64, device=self.device) * scale  # a new tensor: x stays
        dist.all_reduce(t)
        return float(t) if not isinstance(x, Tensor) else t.to(x.device, x.dtype)

    def split_range(self, n: int) -> range:
        """The samples of an ``n``-sample split this rank scores."""
        if not self.active:
            return range(n)
        bounds = torch.tensor_split(torch.arange(n), self.world)[self.rank]
        return range(int(bounds[0]), int(bounds[-1]) + 1) if len(bounds) else range(0)

    def gather(self, t: Tensor) -> Tensor:
        """Concatenate every rank's ``t`` along dim 0, in rank order (shapes may differ in dim 0)."""
        if not self.active:
            return t
        sizes = [torch.zeros((), dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor(len(t), device=self.device))
        pad = int(max(sizes))
        buf = torch.zeros((pad, *t.shape[1:]), dtype=t.dtype, device=self.device)
        buf[: len(t)] = t
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(t.device)

    def average_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Weighted mean of every logged value: a shard mean becomes the global mean; a value that
        is already global (a coefficient) stays itself."""
        if not self.active:
            return logs
        keys = sorted(logs)
        return dict(zip(keys, self.mean(torch.tensor([logs[k] for k in keys], dtype=torch.float64)).tolist()))

    def check_batches(self, batch_size: int, n_train: int, batch_norm: bool = False) -> str | None:
        """Every rank steps on a shard of every training batch, so each batch, the last one
        included, needs a sample per rank; returns a note to say once when BatchNorm's training
        statistics will be per shard (SyncBatchNorm is CUDA-only and the masked passes use
        functional, vmapped, BatchNorm: equivalent in distribution, not bitwise, to one process)."""
        last = n_train % batch_size
        if self.active and (batch_size < self.world or 0 < last < self.world):
            raise ConfigError(f"data.batch_size={batch_size}: with {self.world} ranks every training batch needs at "
                              f"least {self.world} samples" + (f", and the last one holds {last}" if last else "")
                              + "; choose another batch size")
        if self.world > 1 and batch_norm:
            return f"note: BatchNorm statistics are per rank ({self.world} shards of each batch), not synchronised"
        return None

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def on_main(self, fn, error: type[Exception]) -> None:
        """Run ``fn`` on rank 0 only (disk writes); an ``error`` it raises is raised on every rank,
        so no rank waits forever for a rank that gave up."""
        message = None
        if self.is_main:
            try:
                fn()
            except error as e:
                message = str(e)
        if self.active:
            box = [message]
            dist.broadcast_object_list(box, src=0)
            message = box[0]
        if message is not None:
            raise error(message)


def init_from_env(device: str) -> str:
    """Join the process group ``torchrun`` describes (it sets WORLD_SIZE and LOCAL_RANK; one rank
    too): gloo on CPU, nccl on CUDA. Returns the device this rank uses (``cuda:LOCAL_RANK`` on GPU)."""
    if "WORLD_SIZE" not in os.environ or "LOCAL_RANK" not in os.environ or dist.is_initialized():
        return device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


# What gloo and NCCL raise on a surviving rank when a peer process died mid-collective: a plain
# RuntimeError (or torch's DistError) whose text is a transport error and a hint to read the
# other worker's logs -- 80 lines of traceback for "another rank is gone".
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "NCCL error", "ProcessGroupGloo", "ProcessGroupNCCL", "gloo/transport")


def lost_peer(e: BaseException) -> str | None:
    """When ``e`` is a collective that failed because another rank of a running torchrun job
    stopped, a sentence naming it ("rank 1 of 2 ... stopped"); otherwise None. A surviving rank cannot see
    which peer died unless there are only two."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if not (isinstance(e, getattr(dist, "DistError", ())) or
            (isinstance(e, RuntimeError) and any(s in str(e) for s in _LOST_PEER))):
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    who = f"rank {1 - rank} of 2" if world == 2 else f"another of the {world} ranks"
    why = next((s for s in _LOST_PEER if s in str(e)), type(e).__name__)
    return f"{who} of this torchrun job stopped mid-step ({why}, seen by rank {rank})"

