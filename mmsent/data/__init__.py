"""Datasets: MMSA pickles (MOSI/MOSEI) and the synthetic imbalanced default."""
from __future__ import annotations

import os
from pathlib import Path

from mmsent.data.batch import Batch, DataError, Dataset, Split
from mmsent.data.mmsa import load_mmsa, safe_load_pickle
from mmsent.data.synthetic import make_synthetic

AV_DATASETS = ("cremad", "ks", "vggsound")  # audio-visual corpora (mmsent.data.av)
DATASETS = ("synthetic", "mosi", "mosei", *AV_DATASETS)


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
    elif num_classes == 7:
        to_class = lambda y: (torch.round(y.clamp(-3, 3)) + 3).long()  # noqa: E731  (torch.round: half to even)
    else:
        raise DataError(f"sentiment classification supports data.num_classes 2 or 7, got {num_classes}")
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


def build_dataset(cfg, seed: int = 0) -> Dataset:
    """``cfg`` is a ``DataConfig``."""
    if cfg.dataset == "synthetic":
        return make_synthetic(
            n_modalities=cfg.n_modalities, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
            dim=cfg.feature_dim, task=cfg.task, num_classes=cfg.num_classes, seed=seed,
        )
    if cfg.dataset in AV_DATASETS:
        from mmsent.data.av import load_av

        return load_av(cfg, seed)
    if cfg.dataset in ("mosi", "mosei"):
        path = cfg.path or (default_mosi_path() if cfg.dataset == "mosi" else None)
        if path is None and cfg.dataset == "mosei":
            raise DataError("MOSEI has no default location; pass --data PATH to an MMSA pickle "
                            "(or build one with: python cli.py data prepare mosei --csd-dir DIR --out FILE)")
        if path is None:
            raise DataError("MOSI data not found (looked at $MMSENT_MOSI, data/mosi/mosi_utterance.pkl, "
                            "../shared/data/mosi/mosi_utterance.pkl); pass --data PATH to an MMSA pickle")
        tokenizer = None
        if cfg.tokenizer:
            from mmsent.models.pretrained import resolve_model_path

            tokenizer = resolve_model_path(cfg.tokenizer)
        if Path(path).is_dir():  # a folder of .csd files: align in memory, no pickle needed
            path = prepare_csd(Path(path), cfg.folds, cfg.seq_len, cfg.dataset)
        ds = load_mmsa(path, text_tokens=cfg.text_tokens, standardize=cfg.standardize, tokenizer=tokenizer,
                       max_tokens=cfg.max_tokens)
        return sentiment_classes(ds, cfg.num_classes) if cfg.task == "classification" else ds
    raise DataError(f"unknown dataset {cfg.dataset!r}; choose from {', '.join(DATASETS)}")


__all__ = ["prepare_csd", "Batch", "DataError", "Dataset", "Split", "build_dataset", "load_mmsa", "make_synthetic", "safe_load_pickle"]
