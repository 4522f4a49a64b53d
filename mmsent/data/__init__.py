"""Datasets and their registry.

``DATASETS`` maps a name to a ``DatasetSpec``: the loader, the typed settings of its ``data.*`` keys,
the table's column labels for its modalities and its headline metric. Adding a dataset is one
loader (in its own file) plus one line here; ``cli.py`` help, ``cli.py table`` and the config
checks read this dict.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmsent.checks import check, choose
from mmsent.data.av import load_av
from mmsent.data.av_corpus import is_av_folder
from mmsent.data.av_decode import AVSettings
from mmsent.data.batch import Batch, DataError, Dataset, Split
from mmsent.data.mmsa import load_mmsa, safe_load_pickle
from mmsent.data.synthetic import SyntheticSettings, load_synthetic, make_synthetic
from mmsent.pretrained import resolve_model_path


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable  # (DataConfig, seed) -> Dataset
    Settings: type  # frozen dataclass: the dataset's own data.* keys (the attribute every registry entry has)
    family: str  # synthetic | sentiment (CMU SDK .csd / MMSA) | features | av: what `cli.py data` can do for it
    modalities: Optional[dict] = None  # key -> table column label, in table order; None: the data's own keys
    headline: Optional[str] = None  # the table's metric; None: the task's (acc2_has0 for regression, else acc)
    detect: Optional[Callable[[Path], bool]] = None  # claims a --data path given without --dataset


@dataclass(frozen=True)
class SentimentSettings:
    """The ``data.*`` keys of CMU-MOSI / MOSEI."""

    folds: Optional[str] = None  # with a .csd folder: standard (default) | video | FILE.json
    seq_len: int = 50  # with a .csd folder: words per segment
    standardize: bool = True
    text_tokens: bool = False  # read BERT ids from `text_bert` instead of `text` features
    tokenizer: Optional[str] = None  # tokenize `raw_text` with this local tokenizer (or "minilm")
    max_tokens: int = 50  # token budget per utterance, [CLS]/[SEP] included
    task: str = "regression"  # regression (the score in [-3, 3]) | classification (num_classes 2 or 7)
    num_classes: int = 2

    def __post_init__(self):
        check("seq_len", self.seq_len >= 1, self.seq_len, ">= 1")
        check("max_tokens", self.max_tokens >= 3, self.max_tokens, ">= 3")
        check("task", self.task in ("regression", "classification"), self.task, "regression or classification")
        check("num_classes", self.num_classes in (2, 7), self.num_classes, "2 (has0) or 7")


@dataclass(frozen=True)
class FeaturesSettings:
    """The ``data.*`` keys of the ``features`` dataset: any N-modality feature file."""

    modalities: Optional[list[str]] = None  # the keys to use; default every (n, L, D) / (n, D) array
    task: str = "auto"  # auto (regression_labels if present, else classification_labels) | regression | classification
    standardize: bool = True

    def __post_init__(self):
        check("task", self.task in ("auto", "regression", "classification"), self.task,
              "auto, regression or classification")
        check("modalities", self.modalities is None or len(self.modalities) >= 1, self.modalities,
              "a non-empty list of keys")


def default_mosi_path() -> Path | None:
    """Where MOSI is looked for when no path is given: $MMSENT_MOSI, ./data/mosi, ../shared/data/mosi."""
    candidates = [os.environ.get("MMSENT_MOSI"), "data/mosi/mosi_utterance.pkl", "../shared/data/mosi/mosi_utterance.pkl"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def sentiment_classes(ds: Dataset, num_classes: int) -> Dataset:
    """MOSI/MOSEI as classification: 2 classes = has0 (y >= 0), 7 classes = round(clip(y, -3, 3)) + 3
    (np.round semantics: half to even, as MMSA's Acc-7)."""
    import torch

    if num_classes == 2:
        to_class = lambda y: (y >= 0).long()  # noqa: E731
    else:
        to_class = lambda y: (torch.round(y.clamp(-3, 3)) + 3).long()  # noqa: E731  (torch.round: half to even)
    for split in (ds.train, ds.val, ds.test):
        split.y = to_class(split.y)
    ds.task, ds.num_classes = "classification", num_classes
    return ds


def prepare_csd(csd_dir: Path, folds: str | None, seq_len: int, dataset: str = "mosi", progress=None) -> dict:
    """The MMSA-layout dict of a folder of ``.csd`` files; ``folds`` as in ``resolve_folds``
    (default: the dataset's standard folds)."""
    from mmsent.data.csd import CSD, build_mmsa, find_files
    from mmsent.data.folds import resolve_folds

    labels = CSD(find_files(csd_dir)["labels"])
    videos = labels.videos()
    labels.close()
    return build_mmsa(csd_dir, resolve_folds(folds, dataset, videos, str(csd_dir)), seq_len=seq_len,
                      progress=progress)


def load_sentiment(cfg, seed: int = 0) -> Dataset:
    """CMU-MOSI / MOSEI from an MMSA pickle or a folder of .csd files."""
    s = cfg.settings
    path = cfg.path or (default_mosi_path() if cfg.dataset == "mosi" else None)
    if path is None and cfg.dataset == "mosei":
        raise DataError("MOSEI has no default location; pass --data PATH to an MMSA pickle "
                        "(or build one with: python cli.py data prepare mosei --csd-dir DIR --out FILE)")
    if path is None:
        raise DataError("MOSI data not found (looked at $MMSENT_MOSI, data/mosi/mosi_utterance.pkl, "
                        "../shared/data/mosi/mosi_utterance.pkl); pass --data PATH to an MMSA pickle")
    tokenizer = None
    if s.tokenizer:
        tokenizer = resolve_model_path(s.tokenizer)
    if Path(path).is_dir():  # a folder of .csd files: align in memory, no pickle needed
        path = prepare_csd(Path(path), s.folds, s.seq_len, cfg.dataset)
    ds = load_mmsa(path, text_tokens=s.text_tokens, standardize=s.standardize, tokenizer=tokenizer,
                   max_tokens=s.max_tokens)
    return sentiment_classes(ds, s.num_classes) if s.task == "classification" else ds


def load_features(cfg, seed: int = 0) -> Dataset:
    """Any N-modality feature file (MMSA-layout pickle or .npz) with any modality keys."""
    if not cfg.path:
        raise DataError("dataset 'features' needs --data PATH (an MMSA-layout .pkl or an .npz of <split>/<key> arrays)")
    s = cfg.settings
    return load_mmsa(cfg.path, modalities=s.modalities, standardize=s.standardize, task=s.task, sentiment=False)


def is_feature_file(path: Path) -> bool:
    return path.suffix.lower() in (".pkl", ".pickle", ".npz")


MOSI_COLUMNS = {"audio": "Audio", "vision": "Visual", "text": "Text"}  # the paper's Table 2 (right) order
AV_COLUMNS = {"audio": "Audio", "visual": "Visual"}  # Table 1

DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(load_synthetic, SyntheticSettings, "synthetic"),
    "mosi": DatasetSpec(load_sentiment, SentimentSettings, "sentiment", MOSI_COLUMNS),
    "mosei": DatasetSpec(load_sentiment, SentimentSettings, "sentiment", MOSI_COLUMNS),
    "features": DatasetSpec(load_features, FeaturesSettings, "features", detect=is_feature_file),
    "cremad": DatasetSpec(load_av, AVSettings, "av", AV_COLUMNS),
    "ks": DatasetSpec(load_av, AVSettings, "av", AV_COLUMNS),
    "vggsound": DatasetSpec(load_av, AVSettings, "av", AV_COLUMNS),
    "avdigits": DatasetSpec(load_av, AVSettings, "av", AV_COLUMNS),
    "av": DatasetSpec(load_av, AVSettings, "av", AV_COLUMNS, detect=is_av_folder),  # a user's own corpus
}


def infer_dataset(path: str | Path) -> str:
    """The one dataset that claims ``path`` (``--data`` given without ``--dataset``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    claims = [name for name, spec in DATASETS.items() if spec.detect is not None and spec.detect(path)]
    if len(claims) != 1:
        named = ", ".join(n for n, s in DATASETS.items() if s.detect is not None)
        raise DataError(f"{path}: cannot tell which dataset this is ({'claimed by ' + ', '.join(claims) if claims else 'no loader claims it'}); "
                        f"pass --dataset NAME (one of {', '.join(DATASETS)}; {named} are recognised from the path)")
    return claims[0]


def build_dataset(cfg, seed: int = 0) -> Dataset:
    """``cfg`` is a ``DataConfig``."""
    return choose(DATASETS, "dataset", cfg.dataset).load(cfg, seed)


__all__ = ["DATASETS", "Batch", "DataError", "Dataset", "DatasetSpec", "Split", "build_dataset", "infer_dataset",
           "load_mmsa", "make_synthetic", "prepare_csd", "safe_load_pickle"]
