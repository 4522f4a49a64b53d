"""In-memory multimodal splits and the ``Batch`` the models consume.

Modalities are dict keys (``"text"``, ``"audio"``, ``"vision"`` for MOSI), never positions. Every
modality carries a boolean mask, True = real step, so padded steps never reach a model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor


# Samples per forward pass when nothing is trained (validation, test, probes, per-sample scores):
# a memory bound only, results do not depend on it.
EVAL_BATCH = 256


class DataError(ValueError):
    """Bad input data; the message names the file, key and value, and the CLI prints it on one line."""


@dataclass
class Batch:
    x: dict[str, Tensor]  # m -> (B, T_m, F_m) float features, or (B, T) token ids
    mask: dict[str, Tensor]  # m -> (B, T_m) bool, True = real step
    y: Tensor  # (B,) float score (regression) or long class (classification)
    ids: list[str]
    # the samples' positions in their split (what per-sample state, e.g. valuation's re-sampling
    # plan, is keyed by: ids may repeat in a user's data); None for batches made outside a split
    index: Tensor | None = None
    # Work a loader left for the device the batch is moved to (``to`` runs it there): the
    # audio-visual loader can hand over waveforms and uint8 frames, whose STFT, crop and
    # normalisation cost a GPU next to nothing and a loader core most of its time. ``later``
    # holds the per-sample tensors that work needs (moved and sliced with the batch); ``finish``
    # (picklable: it crosses from worker processes) returns the batch the model reads.
    later: dict[str, Tensor] = field(default_factory=dict)
    finish: Callable[[Batch], Batch] | None = None

    @classmethod
    def whole(cls, x: dict[str, Tensor], y: Tensor, ids: list[str], index: list[int], later=None, finish=None) -> Batch:
        """A batch whose every modality is one real step per sample (decoded spectrograms, frames, images)."""
        ones = torch.ones(len(ids), 1, dtype=torch.bool)
        return cls(x, {m: ones.clone() for m in x}, y, ids, torch.as_tensor(index), later or {}, finish)

    def map(self, fn) -> Batch:
        """The same samples with ``fn`` applied to every tensor (features, masks, labels)."""
        return Batch({m: fn(v) for m, v in self.x.items()}, {m: fn(v) for m, v in self.mask.items()}, fn(self.y),
                     self.ids, self.index, {k: fn(v) for k, v in self.later.items()}, self.finish)

    def select(self, rows: Tensor) -> Batch:
        """The samples at positions ``rows`` (a 1-D index tensor), ids and split positions with them."""
        return Batch({m: v[rows] for m, v in self.x.items()}, {m: v[rows] for m, v in self.mask.items()},
                     self.y[rows], [self.ids[i] for i in rows.tolist()],
                     self.index[rows] if self.index is not None else None,
                     {k: v[rows] for k, v in self.later.items()}, self.finish)

    def to(self, device, non_blocking: bool = False) -> Batch:
        """On ``device``, with the work left for it done there."""
        return self.map(lambda t: t.to(device, non_blocking=non_blocking)).ready()

    def ready(self) -> Batch:
        """The batch the model reads, the work left for the device (if any) done where it is."""
        return self.finish(self) if self.finish is not None else self

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) pins a batch through this
        return self.map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Split:
    """One split held as padded tensors: small multimodal corpora fit in memory, and slicing
    tensors is far cheaper than a DataLoader collating per-sample objects."""

    x: dict[str, Tensor]
    mask: dict[str, Tensor]
    y: Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, index: Tensor, *, deferred: bool = False) -> Batch:
        # the whole split as one batch whose samples know their positions, then the rows asked for
        return Batch(self.x, self.mask, self.y, self.ids, torch.arange(len(self))).select(index)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                min_size: int = 1, deferred: bool = False) -> Iterator[Batch]:
        """All samples, the last batch possibly short (every test sample is scored). A last batch
        smaller than ``min_size`` joins the one before it (training BatchNorm needs two samples).
        ``deferred``: the caller moves each batch with ``Batch.to``, so a split may leave work for
        the device (``DecodedSplit``; in-memory batches have none)."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start, stop in batch_bounds(len(self), batch_size, min_size):
            yield self.batch(order[start:stop])

    def n_batches(self, batch_size: int, min_size: int = 1) -> int:
        return len(batch_bounds(len(self), batch_size, min_size))


def carve_validation(train: list, fraction: float, where, what: str) -> tuple[list, list]:
    """Every k-th of ``train`` (k = round(1 / fraction), at least 2) held out for validation, the
    standard protocols having none: ``(train, val)``; one line when none would be left."""
    k = max(2, round(1 / fraction))
    if len(train) < k:
        raise DataError(f"{where}: data.valid_fraction={fraction} leaves no validation {what} among "
                        f"{len(train)} train {what}s")
    val = train[k - 1::k]
    return [x for i, x in enumerate(train) if (i + 1) % k], val


def batch_bounds(n: int, batch_size: int, min_size: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch of ``n`` samples; a last batch smaller than ``min_size`` joins
    the one before it (when there is one)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < min_size:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


@dataclass(frozen=True)
class Deferred:
    """Work a loader leaves for whoever may write (a data cache built on first use): a loader only
    reads, so a dry run can load the same data and say what a run would do."""

    note: str  # what it would do, e.g. "build the cache data.cache=DIR (120 clips)"
    run: Callable[[], None]


@dataclass
class Dataset:
    """train/val/test splits plus what a model needs to know about them."""

    train: Split
    val: Split
    test: Split
    task: str  # "regression" | "classification"
    num_classes: int  # 1 for regression
    dims: dict[str, int]  # m -> feature size (or vocabulary size for token ids)
    token_modalities: tuple[str, ...] = ()  # modalities given as token ids (BERT input)
    kinds: dict[str, str] = field(default_factory=dict)  # m -> "spectrogram" | "frames" | "dense" (image modalities)
    class_weights: Tensor | None = None  # per-class loss weights the data prescribes (NYUv2: median frequency)
    deferred: list[Deferred] = field(default_factory=list)  # left for whoever may write (run_deferred)

    @property
    def modalities(self) -> list[str]:
        return list(self.dims)

    def run_deferred(self) -> None:
        """Do the work the loader left (``build_dataset`` does, unless planning a dry run)."""
        while self.deferred:
            self.deferred.pop(0).run()


class DecodedSplit:
    """A split decoded on demand, with ``Split``'s interface (``ids``, ``batch``, ``batches``,
    ``n_batches``) so the one training loop and every strategy run unchanged. ``self.set`` is a
    map-style dataset whose item ``(leave, [(index, seed)])`` is a whole ``Batch`` (DataLoader
    workers decode batches in parallel while order and augmentation stay fixed by the caller's
    seeds); with ``leave`` true it may leave work for the device (``Batch.finish``)."""

    set: torch.utils.data.Dataset
    ids: list[str]
    train: bool
    num_workers: int
    # On CUDA the workers outlive an epoch and keep 4 batches in flight each (no fork per epoch,
    # no idle GPU while the first batches decode); on CPU they are made per epoch, as before.
    # None: decided at the first epoch (not at import), True / False: forced.
    persistent: bool | None = None
    # Whether batches a caller moves itself (``deferred=True``) leave their finishing work for the
    # device; None: when CUDA is available (on a CPU the loader's workers do it, in parallel with
    # the model). Either way the batch the model reads is the same (tests/test_device_finish.py).
    defer: bool | None = None
    _loader = None

    def __len__(self) -> int:
        return len(self.ids)

    def _leaves(self, deferred: bool) -> bool:
        return deferred and (torch.cuda.is_available() if self.defer is None else self.defer)

    def batch(self, index: Tensor, seed: int = 0, *, deferred: bool = False) -> Batch:
        return self.set[(self._leaves(deferred), [(i, seed + i) for i in index.tolist()])]

    def _min_size(self, min_size: int) -> int:
        # BatchNorm cannot train on one sample (its pooled maps have one value per channel), so a
        # trailing single training sample joins the previous batch rather than being dropped
        return max(min_size, 2) if self.train else min_size

    def n_batches(self, batch_size: int, min_size: int = 1) -> int:
        return len(batch_bounds(len(self), batch_size, self._min_size(min_size)))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                min_size: int = 1, deferred: bool = False) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        # One seed per epoch from the caller's generator: augmentation is reproducible and resumes
        # with the generator state saved in last.pt.
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if self.train and generator is not None else 0
        leave = self._leaves(deferred)
        chunks = [(leave, [(i, base + i) for i in order[s:e].tolist()])
                  for s, e in batch_bounds(len(self), batch_size, self._min_size(min_size))]
        cuda = torch.cuda.is_available()
        if self.num_workers and (cuda if self.persistent is None else self.persistent):
            if self._loader is None:  # one loader whose sampler is refilled each epoch
                self._sampler = _Chunks()
                self._loader = torch.utils.data.DataLoader(
                    self.set, batch_size=None, sampler=self._sampler, num_workers=self.num_workers,
                    persistent_workers=True, prefetch_factor=4, pin_memory=cuda)
            self._sampler.chunks = chunks
            loader = self._loader
        else:
            loader = torch.utils.data.DataLoader(self.set, batch_size=None, sampler=chunks, num_workers=self.num_workers,
                                                 persistent_workers=False, pin_memory=cuda)
        yield from loader


class _Chunks(torch.utils.data.Sampler):
    """The batches of the current epoch, for a persistent loader (read when an epoch's iteration starts)."""

    def __init__(self):
        self.chunks: list = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)
