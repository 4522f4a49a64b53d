"""The ``features`` dataset: a user's own N-modality feature file (an MMSA-layout pickle or an
``.npz`` of ``<split>/<key>`` arrays) with any modality keys. Recognised from the path when
``--data`` is given without ``--dataset``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmsent.checks import check
from mmsent.data.batch import DataError, Dataset
from mmsent.data.mmsa import load_mmsa


@dataclass(frozen=True)
class FeaturesSettings:
    """The ``data.*`` keys of the ``features`` dataset."""

    modalities: Optional[list[str]] = None  # the keys to use; default every (n, L, D) / (n, D) array
    task: str = "auto"  # auto (regression_labels if present, else classification_labels) | regression | classification
    standardize: bool = True

    def __post_init__(self):
        check("task", self.task in ("auto", "regression", "classification"), self.task,
              "auto, regression or classification")
        check("modalities", self.modalities is None or len(self.modalities) >= 1, self.modalities,
              "a non-empty list of keys")


def load_features(cfg, seed: int = 0) -> Dataset:
    if not cfg.path:
        raise DataError("dataset 'features' needs --data PATH (an MMSA-layout .pkl or an .npz of <split>/<key> arrays)")
    s = cfg.settings
    return load_mmsa(cfg.path, modalities=s.modalities, standardize=s.standardize, task=s.task, sentiment=False)


def is_feature_file(path: Path) -> bool:
    return path.suffix.lower() in (".pkl", ".pickle", ".npz")
