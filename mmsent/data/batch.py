"""In-memory multimodal splits and the ``Batch`` the models consume.

Modalities are dict keys (``"text"``, ``"audio"``, ``"vision"`` for MOSI), never positions. Every
modality carries a boolean mask, True = real step, so padded steps never reach a model.
"""
from __future__ import annotations

from collections.abc import Iterator
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

    def map(self, fn) -> Batch:
        """The same samples with ``fn`` applied to every tensor (features, masks, labels)."""
        return Batch({m: fn(v) for m, v in self.x.items()}, {m: fn(v) for m, v in self.mask.items()}, fn(self.y),
                     self.ids, self.index)

    def select(self, rows: Tensor) -> Batch:
        """The samples at positions ``rows`` (a 1-D index tensor), ids and split positions with them."""
        return Batch({m: v[rows] for m, v in self.x.items()}, {m: v[rows] for m, v in self.mask.items()},
                     self.y[rows], [self.ids[i] for i in rows.tolist()],
                     self.index[rows] if self.index is not None else None)

    def to(self, device, non_blocking: bool = False) -> Batch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

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

    def batch(self, index: Tensor) -> Batch:
        # the whole split as one batch whose samples know their positions, then the rows asked for
        return Batch(self.x, self.mask, self.y, self.ids, torch.arange(len(self))).select(index)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                min_size: int = 1) -> Iterator[Batch]:
        """All samples, the last batch possibly short (every test sample is scored). A last batch
        smaller than ``min_size`` joins the one before it (training BatchNorm needs two samples)."""
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

    @property
    def modalities(self) -> list[str]:
        return list(self.dims)


class DecodedSplit:
    """A split decoded on demand, with ``Split``'s interface (``ids``, ``batch``, ``batches``,
    ``n_batches``) so the one training loop and every strategy run unchanged. ``self.set`` is a
    map-style dataset whose item is a whole batch ``[(index, seed)]`` (DataLoader workers decode
    batches in parallel while order and augmentation stay fixed by the caller's seeds);
    ``_to_batch(*item)`` turns what it returns into a ``Batch``."""

    set: torch.utils.data.Dataset
    ids: list[str]
    train: bool
    num_workers: int
    # On CUDA the workers outlive an epoch and keep 4 batches in flight each (no fork per epoch,
    # no idle GPU while the first batches decode); on CPU they are made per epoch, as before.
    # None: decided at the first epoch (not at import), True / False: forced.
    persistent: bool | None = None
    _loader = None

    def __len__(self) -> int:
        return len(self.ids)

    def _to_batch(self, *item) -> Batch:
        raise NotImplementedError

    def batch(self, index: Tensor, seed: int = 0) -> Batch:
        return self._to_batch(*self.set[[(i, seed + i) for i in index.tolist()]])

    def _min_size(self, min_size: int) -> int:
        # BatchNorm cannot train on one sample (its pooled maps have one value per channel), so a
        # trailing single training sample joins the previous batch rather than being dropped
        return max(min_size, 2) if self.train else min_size

    def n_batches(self, batch_size: int, min_size: int = 1) -> int:
        return len(batch_bounds(len(self), batch_size, self._min_size(min_size)))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                min_size: int = 1) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        # One seed per epoch from the caller's generator: augmentation is reproducible and resumes
        # with the generator state saved in last.pt.
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if self.train and generator is not None else 0
        chunks = [[(i, base + i) for i in order[s:e].tolist()]
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
        for item in loader:
            yield self._to_batch(*item)


class _Chunks(torch.utils.data.Sampler):
    """The batches of the current epoch, for a persistent loader (read when an epoch's iteration starts)."""

    def __init__(self):
        self.chunks: list = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)
