"""Synthetic multimodal data with a planted strong/weak modality imbalance, for any N.

Each sample has one latent factor per modality, ``s_m ~ N(0, 1)``. The target depends on all of
them with weights ``c_m`` (the first modality strongest), and modality m observes only its own
``s_m`` through a fixed random direction plus noise. So the first modality alone explains most of
the target (it dominates joint training, as text does on MOSI) while the weak ones still add
information a fused model should use. It is the embedded default dataset and the test fixture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmsent.checks import check, host_memory
from mmsent.data.batch import DataError, Dataset, Split

DEFAULT_NAMES = ("text", "audio", "vision")


def modality_names(n: int) -> list[str]:
    return list(DEFAULT_NAMES) if n == 3 else [f"m{i}" for i in range(n)]


@dataclass(frozen=True)
class SyntheticSettings:
    """The ``data.*`` keys of the synthetic dataset."""

    n_modalities: int = 3
    n_train: int = 800
    n_val: int = 200
    n_test: int = 400
    feature_dim: int = 16
    task: str = "regression"  # regression | classification
    num_classes: int = 2

    def __post_init__(self):
        for key in ("n_modalities", "n_train", "n_val", "n_test", "feature_dim"):
            check(key, getattr(self, key) >= 1, getattr(self, key), ">= 1")
        check("task", self.task in ("regression", "classification"), self.task, "regression or classification")
        check("num_classes", self.num_classes >= 2, self.num_classes, ">= 2")


def load_synthetic(cfg, seed: int = 0) -> Dataset:
    """``cfg`` is a ``DataConfig`` of dataset ``synthetic``."""
    s = cfg.settings
    need = 4 * (s.n_train + s.n_val + s.n_test) * s.n_modalities * (s.feature_dim + 1)  # float32 features + masks
    have = host_memory()
    if have is not None and 2 * need > have:  # generation holds a second copy (noise) while it builds
        raise DataError(f"data sizes n_train={s.n_train}, n_val={s.n_val}, n_test={s.n_test}, n_modalities="
                        f"{s.n_modalities}, feature_dim={s.feature_dim} need about {2 * need / 2**30:.0f} GiB, more "
                        f"than the {have / 2**30:.0f} GiB of this machine; choose smaller ones")
    return make_synthetic(n_modalities=s.n_modalities, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test,
                          dim=s.feature_dim, task=s.task, num_classes=s.num_classes, seed=seed)


def make_synthetic(
    *, n_modalities: int = 3, n_train: int = 800, n_val: int = 200, n_test: int = 400, dim: int = 16,
    seq_len: int = 1, task: str = "regression", num_classes: int = 2, strong: float = 1.0, weak: float = 0.4,
    noise: float = 0.5, seed: int = 0,
) -> Dataset:
    if n_modalities < 1:
        raise ValueError(f"n_modalities must be >= 1, got {n_modalities}")
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    g = torch.Generator().manual_seed(seed)
    names = modality_names(n_modalities)
    weights = torch.tensor([strong] + [weak] * (n_modalities - 1))
    directions = torch.randn(n_modalities, dim, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True) * math.sqrt(dim)

    def split(n: int, prefix: str) -> Split:
        s = torch.randn(n, n_modalities, generator=g)
        latent = (s * weights).sum(1) / weights.norm()  # ~ N(0, 1)
        x, mask = {}, {}
        for i, m in enumerate(names):
            signal = s[:, i, None, None] * directions[i]  # (n, 1, dim)
            x[m] = signal + noise * torch.randn(n, seq_len, dim, generator=g)
            mask[m] = torch.ones(n, seq_len, dtype=torch.bool)
        if task == "regression":
            y = (3 * torch.tanh(latent)).float()  # MOSI-like range [-3, 3]
        else:
            edges = torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, num_classes) / num_classes)
            y = torch.bucketize(latent, edges)
        return Split(x, mask, y, [f"{prefix}{i}" for i in range(n)])

    return Dataset(
        train=split(n_train, "train_"), val=split(n_val, "val_"), test=split(n_test, "test_"), task=task,
        num_classes=1 if task == "regression" else num_classes, dims={m: dim for m in names},
    )
