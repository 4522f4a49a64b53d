"""Per-sample predictions as a run records them: ``test_predictions.csv`` (written by ``fit`` for
the validation-selected model, and by ``cli.py predict``), and the data signature a model depends
on (recorded in ``results.json``, checked when a run predicts on new data)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import Tensor

from mmsent.data.batch import DataError, Dataset, Split
from mmsent.files import make_dir, write_text

PREDICTIONS = "test_predictions.csv"  # in a run folder: the selected model's test predictions


def data_signature(dataset: Dataset) -> dict:
    """What a model built on ``dataset`` depends on (recorded in results.json, checked on new data)."""
    return {"task": dataset.task, "num_classes": dataset.num_classes, "dims": dict(dataset.dims)}


def data_fingerprint(dataset: Dataset) -> str:
    """A digest of what the run trains and is scored on: task, widths, every split's ids and labels,
    and the features of in-memory splits (a decoded corpus's media are named by its ids). A resumed
    run must read the data it started with."""
    import hashlib

    h = hashlib.sha256(repr((dataset.task, dataset.num_classes, sorted(dataset.dims.items()))).encode())
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        h.update(name.encode())
        h.update("\x00".join(map(str, split.ids)).encode())
        y = getattr(split, "y", None)
        if y is not None:
            h.update(y.detach().cpu().contiguous().numpy().tobytes())
        for m, x in sorted((getattr(split, "x", None) or {}).items()):
            h.update(m.encode())
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_data(source: str, dataset: Dataset, trained: dict | None) -> None:
    """One line when ``dataset`` lacks a modality of the run, has another width, or another task."""
    if not trained:
        return  # a run from before the signature was recorded: the weights' shapes are checked instead
    missing = [m for m in trained["dims"] if m not in dataset.dims]
    if missing:
        raise DataError(f"{source}: has no modality {missing[0]!r} (the run was trained on "
                        f"{', '.join(trained['dims'])}; this data has {', '.join(dataset.dims) or 'none'})")
    for m, width in trained["dims"].items():
        if dataset.dims[m] != width:
            raise DataError(f"{source}: modality {m!r} has width {dataset.dims[m]}; the run was trained on width {width}")
    if (dataset.task, dataset.num_classes) != (trained["task"], trained["num_classes"]):
        raise DataError(f"{source}: a {dataset.task} task with {dataset.num_classes} output(s); the run was trained on "
                        f"a {trained['task']} task with {trained['num_classes']}")


def prediction_table(split: Split, preds: dict[str, Tensor], task) -> str:
    """CSV text, one row per sample: id, label, then each branch's prediction (regression: the
    score; classification: the class, and the fused model's class probabilities p_0 ... p_K-1)."""
    out = io.StringIO(newline="")
    w = csv.writer(out)
    branches = list(preds)
    if task.continuous:
        w.writerow(["id", "label", *branches])
        cols = [preds[b][:, 0].tolist() for b in branches]
        for i, (sid, y) in enumerate(zip(split.ids, split.y.tolist())):
            w.writerow([sid, repr(float(y)), *(repr(float(c[i])) for c in cols)])
    else:
        k = preds["multi"].shape[1]
        probs = torch.softmax(preds["multi"].float(), dim=1).tolist()
        cols = [preds[b].argmax(1).tolist() for b in branches]
        w.writerow(["id", "label", *branches, *(f"p_{c}" for c in range(k))])
        for i, (sid, y) in enumerate(zip(split.ids, split.y.tolist())):
            w.writerow([sid, int(y), *(c[i] for c in cols), *(repr(p) for p in probs[i])])
    return out.getvalue()


def write_predictions(path: Path, split: Split, preds: dict[str, Tensor], task) -> Path:
    table = prediction_table(split, preds, task)
    make_dir(Path(path).parent)  # `--out results/preds.csv` into a folder not made yet (only now: all went well)
    return write_text(Path(path), table)
