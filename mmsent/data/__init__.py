"""Datasets and their registry.

``DATASETS`` maps a name to a ``DatasetSpec``: the loader, the typed settings of its ``data.*`` keys,
the table's column labels for its modalities, its headline metric, and what ``cli.py data`` can do for
it. Adding a dataset is one file (loader, settings, and ``prepare`` / ``download`` if it has raw
files to convert) plus one line here; ``cli.py`` help, ``cli.py data``, ``cli.py table`` and the
config checks read this dict.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmsent.checks import choose
from mmsent.data import features, media, nyuv2, sentiment
from mmsent.data.av import load_av
from mmsent.data.av_corpus import is_av_folder
from mmsent.data.av_decode import AVSettings
from mmsent.data.batch import Batch, DataError, Dataset, Deferred, Split
from mmsent.data.job import Job, option
from mmsent.data.mmsa import load_mmsa, safe_load_pickle
from mmsent.data.rgbd_scenes import RGBDScenesSettings, load_rgbd_scenes
from mmsent.data.sentiment import prepare_csd
from mmsent.data.synthetic import SyntheticSettings, load_synthetic, make_synthetic


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable  # (DataConfig, seed) -> Dataset; the config's path already looked up in `locations`
    Settings: type  # frozen dataclass: the dataset's own data.* keys (the attribute every registry entry has)
    modalities: Optional[dict] = None  # key -> table column label, in table order; None: the data's own keys
    headline: Optional[str] = None  # the table's metric; None: the task's (acc2_has0 for regression, else acc)
    detect: Optional[Callable[[Path], bool]] = None  # claims a --data path given without --dataset
    locations: tuple = ()  # where the data is looked for without --data: "$VARIABLE" or a path, first found wins
    # `cli.py data ACTION NAME key=value...`: a Job (its function and the Options it declares, see data/job.py)
    prepare: Optional[Job] = None  # raw files -> what `load` reads
    download: Optional[Job] = None  # fetch the raw files
    cache: Optional[Job] = None  # decoded inputs for fast batches
    dense: bool = False  # per-pixel labels (segmentation): its tables hold the strategies defined for dense prediction


def find_data(locations) -> Path | None:
    """The first of ``locations`` that is a file or folder; "$NAME" is the environment variable."""
    for where in locations:
        path = os.environ.get(where[1:]) if where.startswith("$") else where
        if path and Path(path).exists():
            return Path(path)
    return None


MOSI_COLUMNS = {"audio": "Audio", "vision": "Visual", "text": "Text"}  # the paper's Table 2 (right) order
AV_COLUMNS = {"audio": "Audio", "visual": "Visual"}  # Table 1
# Where data is found without --data: an environment variable, then a folder of the working
# directory. A checkout's `python cli.py` (and the tests) point the variables at their ../shared.
MOSI_FILES = ("$MMSENT_MOSI", "data/mosi/mosi_utterance.pkl")
AVDIGITS_FILES = ("$MMSENT_AVDIGITS", "data/avdigits")

DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(load_synthetic, SyntheticSettings),
    "mosi": DatasetSpec(sentiment.load_sentiment, sentiment.SentimentSettings, MOSI_COLUMNS, locations=MOSI_FILES,
                        prepare=sentiment.PREPARE, download=sentiment.DOWNLOAD),
    "mosei": DatasetSpec(sentiment.load_sentiment, sentiment.SentimentSettings, MOSI_COLUMNS,
                         prepare=sentiment.PREPARE, download=sentiment.DOWNLOAD),
    "features": DatasetSpec(features.load_features, features.FeaturesSettings, detect=features.is_feature_file),
    "cremad": DatasetSpec(load_av, AVSettings, AV_COLUMNS, prepare=media.PREPARE, cache=media.CACHE),
    "ks": DatasetSpec(load_av, AVSettings, AV_COLUMNS, prepare=media.PREPARE, cache=media.CACHE),
    "vggsound": DatasetSpec(load_av, AVSettings, AV_COLUMNS, prepare=media.PREPARE, cache=media.CACHE),
    "avdigits": DatasetSpec(load_av, AVSettings, AV_COLUMNS, locations=AVDIGITS_FILES, prepare=media.PREPARE,
                            cache=media.CACHE),
    "av": DatasetSpec(load_av, AVSettings, AV_COLUMNS, detect=is_av_folder, prepare=media.PREPARE, cache=media.CACHE),  # a user's own corpus
    "rgbd_scenes": DatasetSpec(load_rgbd_scenes, RGBDScenesSettings, {"rgb": "RGB", "depth": "Depth"}, dense=True),
    "nyuv2": DatasetSpec(nyuv2.load_nyuv2, nyuv2.NYUv2Settings, {"rgb": "RGB", "depth": "Depth"}, dense=True,
                         detect=nyuv2.is_prepared_folder, prepare=nyuv2.PREPARE),
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


def build_dataset(cfg, seed: int = 0, *, planning: bool = False) -> Dataset:
    """``cfg`` is a ``DataConfig``. The loader only reads; what it leaves to write (``Dataset.deferred``:
    a data cache built on first use) is done here, unless ``planning`` (a dry run, which says it)."""
    spec = choose(DATASETS, "dataset", cfg.dataset)
    if not cfg.path and spec.locations:
        found = find_data(spec.locations)
        if found is None:
            raise DataError(f"{cfg.dataset} data not found (looked at {', '.join(spec.locations)}); pass --data PATH")
        cfg = dataclasses.replace(cfg, path=str(found))
    dataset = spec.load(cfg, seed)
    if not planning:
        dataset.run_deferred()
    return dataset


__all__ = ["DATASETS", "Batch", "DataError", "Dataset", "DatasetSpec", "Deferred", "Job", "option", "Split", "build_dataset", "infer_dataset",
           "load_mmsa", "make_synthetic", "prepare_csd", "safe_load_pickle"]
