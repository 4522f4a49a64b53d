"""CMU-MOSI and CMU-MOSEI: utterance features from an MMSA pickle or a folder of CMU SDK ``.csd``
files, as regression (the score in [-3, 3]) or classification (has0 Acc-2 or Acc-7 classes).

Registered twice (``mosi``, ``mosei``) in ``mmsent.data.DATASETS`` with ``load``, ``prepare``
(``cli.py data prepare mosi csd_dir=DIR out=FILE``) and ``download`` (the CMU SDK's URLs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmsent.checks import check, command
from mmsent.data.batch import DataError, Dataset
from mmsent.data.job import Job, option
from mmsent.data.mmsa import load_mmsa, write_pickle
from mmsent.pretrained import resolve_model_path


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
    """CMU-MOSI / MOSEI from an MMSA pickle or a folder of .csd files (``cfg`` is a ``DataConfig``)."""
    if not cfg.path:
        raise DataError(f"{cfg.dataset}: pass --data PATH to an MMSA pickle or a folder of .csd files (build a "
                        f"pickle with: {command()} data prepare {cfg.dataset} csd_dir=DIR out=FILE)")
    s = cfg.settings
    tokenizer = resolve_model_path(s.tokenizer) if s.tokenizer else None
    path = cfg.path
    if Path(path).is_dir():  # a folder of .csd files: align in memory, no pickle needed
        path = prepare_csd(Path(path), s.folds, s.seq_len, cfg.dataset)
    ds = load_mmsa(path, text_tokens=s.text_tokens, standardize=s.standardize, tokenizer=tokenizer,
                   max_tokens=s.max_tokens)
    return sentiment_classes(ds, s.num_classes) if s.task == "classification" else ds


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    csd_dir: str = option("the folder holding the .csd files (words, COVAREP, FACET, labels[, word vectors])", "DIR")
    out: str = option("the MMSA-layout pickle to write", "FILE")


def prepare(dataset: str, opts: PrepareOptions, settings: SentimentSettings, progress=None) -> str:
    """``cli.py data prepare``: ``.csd`` files -> one MMSA-layout pickle, split by ``settings.folds``
    (``folds=standard|video|FILE.json``) and cut to ``settings.seq_len`` words."""
    data = prepare_csd(Path(opts.csd_dir), settings.folds, settings.seq_len, dataset, progress=progress)
    out = write_pickle(data, Path(opts.out))
    sizes = ", ".join(f"{k} {len(v['id'])}" for k, v in data.items())
    return f"wrote {out} ({sizes} segments); train with: {command()} train --dataset {dataset} --data {out}"


@dataclass(frozen=True, kw_only=True)
class DownloadOptions:
    out: str = option("the folder for the .csd files (default data/<dataset>_csd)", "DIR", default="")


def download(dataset: str, opts: DownloadOptions, settings=None, progress=None) -> str:
    """``cli.py data download``: the ``.csd`` files the installed CMU SDK names, into ``out``."""
    from mmsent.data.download import download as fetch

    out_dir = Path(opts.out or f"data/{dataset}_csd")
    files = fetch(dataset, out_dir, progress=progress)
    return (f"wrote {len(files)} .csd files to {out_dir}; next: {command()} data prepare {dataset} "
            f"csd_dir={out_dir} out=data/{dataset}.pkl")


PREPARE, DOWNLOAD = Job(prepare, PrepareOptions), Job(download, DownloadOptions)
