"""Which differences in a table are real: each row against a reference row (the multimodal
baseline), two ways.

* **Over seeds** (what mean ± std rows hide): the paired difference of the row's and the
  reference's test metric, seed s against seed s, with its 95 % t-interval
  ``mean ± t(0.975, n-1) · sd / sqrt(n)`` and the paired t-test's two-sided p. With n seeds the
  interval's half-width is ``t(0.975, n-1) / sqrt(n)`` standard deviations of the per-seed
  differences: 2.48 sd at 3 seeds, 1.24 at 5, 0.72 at 10, so few seeds resolve only large,
  consistent differences.
* **Over test samples** (what one seed's noise cannot fake): the selected models' per-sample
  predictions (``test_predictions.csv`` of each run). For an accuracy-type metric, McNemar's exact
  test: the samples one model gets right and the other wrong, pooled over the paired seeds, are
  binomial(b + c, 1/2) under "no difference", p = min(1, 2 · P(X <= min(b, c))). For MAE, the
  paired t-test on the per-sample absolute errors averaged over seeds. A metric that is a ratio over
  the whole split (mIoU) has no per-sample test.

p-values are per row and not corrected for the number of rows: among 20 rows of equal methods about
one would be marked at 0.05 by chance.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from scipy import special

from mmsent.predictions import PREDICTIONS


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom."""
    return float(special.stdtrit(df, q))


def t_test_p(t: float, df: int) -> float:
    """Two-sided p of a t statistic: P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2)."""
    if math.isinf(t):
        return 0.0
    return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


@dataclass(frozen=True)
class Paired:
    """A paired comparison: mean difference, its 95 % interval, the test's p and the count behind it."""

    mean: float
    low: float
    high: float
    p: float
    n: int


def paired_t(a: list[float], b: list[float], level: float = 0.95) -> Paired:
    """Paired t over matched values (``a[i]`` against ``b[i]``): mean of a - b, its t-interval and the
    two-sided p of "mean difference 0". One pair: no interval (nan)."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = statistics.fmean(d) if d else math.nan
    if n < 2:
        return Paired(mean, math.nan, math.nan, math.nan, n)
    se = statistics.stdev(d) / math.sqrt(n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    if se == 0:
        return Paired(mean, mean, mean, 1.0 if mean == 0 else 0.0, n)
    return Paired(mean, mean - half, mean + half, t_test_p(mean / se, n - 1), n)


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p for b and c discordant pairs (binomial(b + c, 1/2) under the null)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers, one rounding


def read_predictions(run: Path) -> dict[str, tuple[float, float]] | None:
    """id -> (label, fused prediction) of a run's test predictions; None when the run has none."""
    path = Path(run) / PREDICTIONS
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return {r["id"]: (float(r["label"]), float(r["multi"])) for r in csv.DictReader(f)}


def correct(metric: str, label: float, pred: float) -> bool:
    """Whether one sample counts as right under an accuracy-type metric."""
    if metric == "acc2_has0":
        return (pred >= 0) == (label >= 0)
    return int(pred) == int(label)  # classification: the predicted class


ACCURACY = ("acc", "acc2_has0")  # the headline metrics scored per sample by correctness
# The test over samples each metric has; a metric not named (mIoU, a ratio over the whole split) has none.
SAMPLE_TESTS = {**{m: "McNemar exact, predictions pooled over seeds" for m in ACCURACY},
                "mae": "paired t on per-sample errors"}


def sample_test(metric: str, rows: list[dict], refs: list[dict]) -> tuple[float, int] | None:
    """p over test samples and the number of samples, pooling the paired seeds' predictions (``rows[s]``
    against ``refs[s]``, id -> (label, prediction)); None when the metric has no such test
    (``SAMPLE_TESTS``), a run lacks predictions or the runs were not scored on the same samples."""
    if metric not in SAMPLE_TESTS or not rows or any(r is None for r in rows + refs):
        return None
    ids = set(rows[0])
    if any(set(r) != ids for r in rows + refs):
        return None
    if metric in ACCURACY:
        b = sum(correct(metric, *r[i]) and not correct(metric, *f[i]) for r, f in zip(rows, refs) for i in ids)
        c = sum(correct(metric, *f[i]) and not correct(metric, *r[i]) for r, f in zip(rows, refs) for i in ids)
        return mcnemar_p(b, c), len(ids)
    err = lambda runs, i: statistics.fmean(abs(r[i][1] - r[i][0]) for r in runs)  # noqa: E731
    order = sorted(ids)
    return paired_t([err(rows, i) for i in order], [err(refs, i) for i in order]).p, len(ids)


def stars(p: float) -> str:
    """The table's mark: * p < 0.05, ** p < 0.01 (nothing for larger or unknown p)."""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""
