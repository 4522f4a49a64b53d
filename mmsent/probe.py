"""Linear probes of frozen encoders: how much of the task each modality's representation holds.

The paper's claim is that DGL's encoders learn better. Its evidence, a modality's branch (the
shared head with the other modalities zeroed), also measures the head on inputs it may never have
been trained on; a probe removes that confound. After training, each encoder's features on the
train split (sequences flattened, CNN maps pooled to channels, as ``feature_vectors`` does) are
standardised with train statistics and a linear model is fitted on them: ridge regression for
regression tasks, multinomial logistic regression for classes, its regularisation strength chosen
on the validation split (MAE / accuracy). The chosen probe is scored on test with the task's own
metrics. Unimodal-only models get the same probe, so "DGL encoder vs unimodal encoder" compares
like with like; the encoders a unimodal-only model never trains give a random-features baseline.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from mmsent.data.batch import EVAL_BATCH
from mmsent.models.model import MultimodalModel, evaluating

RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
LOGISTIC_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@torch.no_grad()
def encoder_features(model: MultimodalModel, split, batch_size: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Each encoder's features over a whole split, one float64 row per sample (eval mode)."""
    from mmsent.strategies.base import feature_vectors

    device = next(model.parameters()).device
    out: dict[str, list] = {m: [] for m in model.modalities}
    with evaluating(model):
        for batch in split.batches(batch_size):
            for m, z in model.encode(batch.to(device)).items():
                out[m].append(feature_vectors(z.float()).double().cpu().numpy())
    return {m: np.concatenate(v) for m, v in out.items()}


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return [(x - mean) / std for x in (train, *others)]


def fit_probe(task, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict:
    """``x``/``y``: split name (train, val, test) -> features / labels. Returns the chosen
    regularisation and the task's metrics of the probe on val and test."""
    from sklearn.linear_model import LogisticRegression, Ridge

    tr, va, te = _standardize(x["train"], x["val"], x["test"])
    regression = task.name == "regression"
    best = None
    for reg in RIDGE_ALPHAS if regression else LOGISTIC_CS:
        if regression:
            probe = Ridge(alpha=reg).fit(tr, y["train"])
            pred = lambda a, p=probe: torch.from_numpy(p.predict(a)).float()[:, None]  # noqa: E731
        else:
            with warnings.catch_warnings():  # a probe that stops at max_iter is still a valid probe
                warnings.simplefilter("ignore")
                probe = LogisticRegression(C=reg, max_iter=300).fit(tr, y["train"])
            # logits over every class id, also those absent from train
            pred = lambda a, p=probe: _logits(p, a, task.num_classes)  # noqa: E731
        val = task.metrics(pred(va), torch.from_numpy(y["val"]))
        score = -val["mae"] if regression else val["acc"]
        if best is None or score > best[0]:
            best = (score, reg, val, pred)
    _, reg, val, pred = best
    return {"reg": reg, "val": val, "test": task.metrics(pred(te), torch.from_numpy(y["test"]))}


def _logits(probe, a: np.ndarray, k: int) -> torch.Tensor:
    d = probe.decision_function(a)
    if d.ndim == 1:  # two classes seen in train: one score, for classes_[1]
        d = np.stack([-d, d], 1) / 2
    out = np.full((len(a), k), -1e9)
    out[:, probe.classes_.astype(int)] = d
    return torch.from_numpy(out).float()


def probe_encoders(model: MultimodalModel, dataset, task, batch_size: int = EVAL_BATCH) -> dict[str, dict]:
    """A linear probe per modality: ``{m: {"reg": ..., "val": metrics, "test": metrics}}``, or
    ``{m: {"skipped": why}}`` for a probe that cannot be fitted (the run's results are kept: a probe
    is an extra measurement, never a reason to lose a trained model)."""
    if task.name == "segmentation":  # per-pixel probes are not built: recorded as skipped, quietly
        return {m: {"skipped": "no linear probe for per-pixel features"} for m in model.modalities}
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    feats = {name: encoder_features(model, s, batch_size) for name, s in splits.items()}
    ys = {name: s.y.numpy() for name, s in splits.items()}
    if task.name == "classification" and len(np.unique(ys["train"])) < 2:
        why = f"the train split holds a single class ({int(ys['train'][0])}); a classifier needs two"
        warnings.warn(f"linear probes skipped: {why}", stacklevel=2)
        return {m: {"skipped": why} for m in model.modalities}
    out = {}
    for m in model.modalities:
        x = {name: f[m] for name, f in feats.items()}
        if any(not np.isfinite(v).all() for v in x.values()):
            out[m] = {"skipped": "its features hold non-finite values"}
            continue
        try:
            out[m] = fit_probe(task, x, ys)
        except (ValueError, np.linalg.LinAlgError) as e:  # what scikit-learn raises for data it cannot fit
            out[m] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
        if "skipped" in out[m]:
            warnings.warn(f"linear probe of {m!r} skipped: {out[m]['skipped']}", stacklevel=2)
    return out
