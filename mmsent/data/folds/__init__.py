"""Video-level folds: the standard CMU folds shipped as data, a JSON file, or a deterministic split.

The standard folds are the split definition of each corpus (plain lists of video ids, as the CMU
Multimodal SDK exposes them under ``standard_folds``); they are stored here as JSON so that a folder
of ``.csd`` files becomes the published split without the SDK installed.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from mmsent.data.batch import DataError

HERE = Path(__file__).parent
SPLITS = ("train", "valid", "test")


def standard_folds(dataset: str) -> dict[str, list[str]] | None:
    """The shipped standard folds of ``dataset`` (``mosi`` | ``mosei``), or None when none ship."""
    path = HERE / f"{dataset}.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return {s: list(doc[s]) for s in SPLITS}


def read_folds(path: str | Path) -> dict[str, list[str]]:
    """Folds from a JSON file ``{"train": [video ids], "valid": [...], "test": [...]}``."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read folds JSON ({e})") from None
    if not isinstance(doc, dict) or not set(SPLITS) <= set(doc):
        raise DataError(f"{path}: folds must be a mapping with the keys train, valid, test")
    for s in SPLITS:
        if not isinstance(doc[s], list) or not all(isinstance(v, str) for v in doc[s]):
            raise DataError(f"{path}: folds[{s!r}] must be a list of video-id strings")
    return {s: doc[s] for s in SPLITS}


def video_folds(videos: list[str], valid: float = 0.1, test: float = 0.2) -> dict[str, list[str]]:
    """A deterministic video-level split (sorted ids, every k-th video) for corpora without folds."""
    vids = sorted(videos)
    n_test, n_valid = round(len(vids) * test), round(len(vids) * valid)
    test_ids = vids[:: max(1, len(vids) // max(1, n_test))][:n_test] if n_test else []
    rest = [v for v in vids if v not in test_ids]
    valid_ids = rest[:: max(1, len(rest) // max(1, n_valid))][:n_valid] if n_valid else []
    return {"train": [v for v in rest if v not in valid_ids], "valid": valid_ids, "test": test_ids}


def resolve_folds(spec: str | None, dataset: str, videos: list[str], source: str) -> dict[str, list[str]]:
    """Folds for the labelled ``videos`` of ``source`` (a folder, named in messages).

    ``spec``: None or ``"standard"`` = the dataset's shipped standard folds; ``"video"`` = the
    deterministic split of ``video_folds``; anything else = a JSON file. Standard folds must name
    only videos that exist (a missing one is an error naming it: silently training on fewer videos
    would change the benchmark); labelled videos outside every fold are counted in a warning.
    """
    if spec == "video":
        return video_folds(videos)
    if spec not in (None, "standard"):
        return read_folds(spec)
    folds = standard_folds(dataset)
    if folds is None:
        if spec == "standard":
            raise DataError(f"{dataset}: no standard folds ship with mmsent; pass data.folds=FILE.json or data.folds=video")
        warnings.warn(f"{source}: no standard folds ship for {dataset}; using a deterministic video-level split",
                      stacklevel=3)
        return video_folds(videos)
    have = set(videos)
    missing = [v for s in SPLITS for v in folds[s] if v not in have]
    if missing:
        raise DataError(f"{source}: {len(missing)} videos of the standard {dataset} folds are not in the labels "
                        f"(first: {missing[0]!r}); pass data.folds=FILE.json or data.folds=video for a partial corpus")
    outside = len(have - {v for s in SPLITS for v in folds[s]})
    if outside:
        warnings.warn(f"{source}: {outside} labelled videos are in no standard fold and are left out", stacklevel=3)
    return folds
