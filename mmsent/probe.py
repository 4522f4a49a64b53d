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
Segmentation encoders get a per-pixel probe instead (``probe_pixels``): one logistic regression on
the feature vector at each location of the encoder's map, scored on every labelled location.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from mmsent.data.batch import EVAL_BATCH
from mmsent.models.model import MultimodalModel, evaluating
from mmsent.tasks import lower_is_better

RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
LOGISTIC_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@torch.no_grad()
def encoder_features(model: MultimodalModel, split, batch_size: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Each encoder's features over a whole split, one float64 row per sample (eval mode)."""
    from mmsent.strategies.base import feature_vectors

    device = next(model.parameters()).device
    out: dict[str, list] = {m: [] for m in model.modalities}
    with evaluating(model):
        for batch in split.batches(batch_size, deferred=True):
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
    regression = task.continuous  # a ridge probe of the score, else a logistic one of the classes
    select = task.probe_select or task.headline
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
        score = -val[select] if lower_is_better(select) else val[select]
        if best is None or score > best[0]:
            best = (score, reg, val, pred)
    _, reg, val, pred = best
    return {"reg": reg, "val": val, "test": task.metrics(pred(te), torch.from_numpy(y["test"]))}


def _logits(probe, a: np.ndarray, k: int) -> torch.Tensor:
    """Logits over every class id of the fitted logistic probe on (standardised) features ``a``."""
    w, b = _linear(probe, np.zeros(a.shape[1]), np.ones(a.shape[1]), k)
    return (torch.from_numpy(a) @ w.T + b).float()


def probe_encoders(model: MultimodalModel, dataset, task, batch_size: int = EVAL_BATCH) -> dict[str, dict]:
    """A linear probe per modality: ``{m: {"reg": ..., "val": metrics, "test": metrics}}``, or
    ``{m: {"skipped": why}}`` for a probe that cannot be fitted (the run's results are kept: a probe
    is an extra measurement, never a reason to lose a trained model)."""
    if not task.tabular:  # per-pixel outputs: per-pixel probes
        return probe_pixels(model, dataset, task, batch_size)
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    feats = {name: encoder_features(model, s, batch_size) for name, s in splits.items()}
    ys = {name: s.y.numpy() for name, s in splits.items()}
    if not task.continuous and len(np.unique(ys["train"])) < 2:
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


# --- per-pixel probes (segmentation) ------------------------------------------------------------------

PIXEL_SAMPLE = 20000  # labelled feature locations a pixel probe is fitted on (and its strength chosen on)


@torch.no_grad()
def _pixel_batches(model: MultimodalModel, split, batch_size: int):
    """Per batch: ``{m: (features (B, C, h, w), labels (B, h, w))}``, each encoder's map with the
    labels taken at its resolution by nearest neighbour (void stays void)."""
    device = next(model.parameters()).device
    with evaluating(model):
        for batch in split.batches(batch_size, deferred=True):
            out = {}
            for m, z in model.encode(batch.to(device)).items():
                y = torch.nn.functional.interpolate(batch.y[:, None].float(), size=z.shape[-2:], mode="nearest")
                out[m] = (z.float().cpu(), y[:, 0].long().cpu())
            yield out


def _pixel_sample(model, split, batch_size: int, n: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """About ``n`` labelled locations per modality, drawn uniformly within each batch in proportion
    to its images (a fixed generator: the same locations for every run of a table)."""
    g = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {}
    for part in _pixel_batches(model, split, batch_size):
        for m, (z, y) in part.items():
            x = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            labels = y.reshape(-1)
            keep = (labels >= 0).nonzero().flatten()
            k = min(len(keep), -(-n * len(y) // len(split)))
            pick = keep[torch.randperm(len(keep), generator=g)[:k]]
            rows.setdefault(m, []).append((x[pick].double().numpy(), labels[pick].numpy()))
    return {m: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for m, v in rows.items()}


def _linear(probe, mean: np.ndarray, std: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fitted logistic probe (on features standardised by ``mean`` / ``std``) as one linear map
    on raw features: logits = x W^T + b over all k classes, scikit-learn's decision function (a
    class absent from the training sample gets -1e9; with two classes seen, +-half the one score)."""
    coef, icpt = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # two classes seen: one score, for classes_[1]
        coef, icpt = np.concatenate([-coef, coef]) / 2, np.concatenate([-icpt, icpt]) / 2
    w = np.zeros((k, coef.shape[1]))
    b = np.full(k, -1e9)
    w[probe.classes_.astype(int)], b[probe.classes_.astype(int)] = coef / std, icpt - (coef / std) @ mean
    return torch.from_numpy(w), torch.from_numpy(b)


def _pixel_confusions(model, split, batch_size: int, probes: dict, k: int) -> dict[str, torch.Tensor]:
    """Each modality's probe's confusion counts over every labelled location of ``split``, from one
    pass of the encoders (``probes``: modality -> (W, b) of ``_linear``)."""
    from mmsent.tasks import confusion

    cms = {m: torch.zeros(k, k, dtype=torch.long) for m in probes}
    for part in _pixel_batches(model, split, batch_size):
        for m, (w, b) in probes.items():
            z, y = part[m]
            logits = torch.einsum("bchw,kc->bkhw", z.double(), w) + b[:, None, None]
            cms[m] += confusion(logits.argmax(1), y, k)
    return cms


def probe_pixels(model: MultimodalModel, dataset, task, batch_size: int = EVAL_BATCH,
                 sample: int = PIXEL_SAMPLE) -> dict[str, dict]:
    """A per-pixel linear probe per modality: multinomial logistic regression on each frozen
    encoder's feature vector at every location of its map (labels taken at that resolution),
    fitted on ``sample`` labelled train locations, its strength chosen by the mIoU of ``sample``
    validation locations, then scored on every labelled location of validation and test (one
    confusion matrix each, the task's metrics). For a multi-scale encoder (ESANet's) the vector at
    a location is every stage's features there (the packed map)."""
    from sklearn.linear_model import LogisticRegression

    from mmsent.tasks import confusion, segmentation_metrics

    k = task.num_classes
    train = _pixel_sample(model, dataset.train, batch_size, sample, seed=0)
    val = _pixel_sample(model, dataset.val, batch_size, sample, seed=1)
    out, fitted = {}, {}
    for m in model.modalities:
        (xt, yt), (xv, yv) = train[m], val[m]
        if not (np.isfinite(xt).all() and np.isfinite(xv).all()):
            out[m] = {"skipped": "its features hold non-finite values"}
        elif len(np.unique(yt)) < 2:
            out[m] = {"skipped": "the sampled train pixels hold a single class; a classifier needs two"}
        if m in out:
            warnings.warn(f"pixel probe of {m!r} skipped: {out[m]['skipped']}", stacklevel=2)
            continue
        mean, std = xt.mean(0), np.where(xt.std(0) > 1e-8, xt.std(0), 1.0)
        best = None
        for c in LOGISTIC_CS:
            with warnings.catch_warnings():  # a probe that stops at max_iter is still a valid probe
                warnings.simplefilter("ignore")
                probe = LogisticRegression(C=c, max_iter=300).fit((xt - mean) / std, yt)
            w, b = _linear(probe, mean, std, k)
            pred = (torch.from_numpy(xv) @ w.T + b).argmax(1)
            score = segmentation_metrics(confusion(pred, torch.from_numpy(yv), k))["miou"]
            if best is None or score > best[0]:
                best = (score, c, w, b)
        _, c, w, b = best
        out[m], fitted[m] = {"reg": c, "pixels": len(yt)}, (w, b)
    for name, split in (("val", dataset.val), ("test", dataset.test)):  # one pass of the encoders per split
        for m, cm in _pixel_confusions(model, split, batch_size, fitted, k).items():
            out[m][name] = segmentation_metrics(cm)
    return out
