"""Significance in `cli.py table`: the paired interval and tests against scipy.stats (the oracle)
and hand-worked values, and a table of hand-made runs whose marks are known."""
import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from mmsent.significance import mcnemar_p, paired_t, sample_test, t_test_p
from mmsent.table import write_table


def test_paired_t_is_scipys_paired_test_and_t_interval():
    a, b = [0.80, 0.82, 0.79, 0.85, 0.81], [0.78, 0.80, 0.80, 0.81, 0.79]
    got = paired_t(a, b)
    d = [x - y for x, y in zip(a, b)]
    assert got.p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    assert (got.low, got.high, got.mean, got.n) == (pytest.approx(low), pytest.approx(high), pytest.approx(0.018), 5)
    # by hand: d = 1, 2, 3 -> mean 2, sd 1, t = 2 sqrt(3) on 2 df, t(0.975, 2) = 4.3027
    hand = paired_t([1, 2, 3], [0, 0, 0])
    assert hand.low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5) and hand.p == pytest.approx(0.074180, abs=1e-5)
    assert math.isnan(paired_t([1.0], [0.0]).low)  # one seed: no interval
    for t, df in ((0.3, 1), (2.1, 4), (-5.0, 9), (12.0, 30)):
        assert t_test_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)


@pytest.mark.parametrize("b,c,hand", [(0, 5, 2 / 32), (1, 9, 2 * 11 / 1024), (10, 10, 1.0), (0, 0, 1.0), (37, 61, None)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(b, c, hand):
    if hand is not None:
        assert mcnemar_p(b, c) == pytest.approx(hand, rel=1e-12)
    if b + c:
        assert mcnemar_p(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_sample_test_pools_seeds_for_accuracy_and_tests_errors_for_mae():
    y = {str(i): (float(i % 2), 0.0) for i in range(6)}
    base = {i: (lab, 1 - lab) for i, (lab, _) in y.items()}  # every sample wrong
    row = {i: (lab, lab if int(i) < 4 else 1 - lab) for i, (lab, _) in y.items()}  # 4 of 6 right
    p, n = sample_test("acc", [row, row], [base, base])
    assert (p, n) == (mcnemar_p(8, 0), 6)  # 4 discordant samples in each of the two seeds
    # has0 accuracy of regression: the sign decides
    reg_base = {"a": (1.0, -0.5), "b": (-1.0, 0.2), "c": (0.0, 0.1)}
    reg_row = {"a": (1.0, 0.5), "b": (-1.0, -0.2), "c": (0.0, -0.1)}
    assert sample_test("acc2_has0", [reg_row], [reg_base]) == (mcnemar_p(2, 1), 3)
    # MAE: paired t on per-sample absolute errors averaged over seeds
    e_row = {k: (0.0, v) for k, v in zip("abcd", (0.1, 0.4, 0.2, 0.3))}
    e_base = {k: (0.0, v) for k, v in zip("abcd", (0.5, 0.6, 0.2, 0.9))}
    p, n = sample_test("mae", [e_row], [e_base])
    assert n == 4 and p == pytest.approx(stats.ttest_rel([0.1, 0.4, 0.2, 0.3], [0.5, 0.6, 0.2, 0.9]).pvalue)
    assert sample_test("acc", [None], [base]) is None  # a run without predictions
    assert sample_test("acc", [row], [{"x": (0.0, 0.0)}]) is None  # not the same samples
    assert sample_test("miou", [e_row], [e_base]) is None  # a ratio over the whole split: no per-sample test


def _run(path: Path, right: int, n: int = 40) -> Path:
    """A hand-made avdigits-style run: classification, the first ``right`` of ``n`` test samples right."""
    path.mkdir(parents=True)
    labels = [i % 3 for i in range(n)]
    preds = [lab if i < right else (lab + 1) % 3 for i, lab in enumerate(labels)]
    acc = right / n
    scores = {b: {"loss": 1.0, "acc": acc, "f1": acc} for b in ("multi", "audio", "visual")}
    (path / "results.json").write_text(json.dumps({"task": "classification", "test": scores, "val": scores}))
    rows = ["id,label,multi,audio,visual,p_0,p_1,p_2"] + [f"c{i},{lab},{p},{p},{p},0.3,0.3,0.4"
                                                          for i, (lab, p) in enumerate(zip(labels, preds))]
    (path / "test_predictions.csv").write_text("\n".join(rows) + "\n")
    return path


def test_the_table_marks_the_rows_that_differ_from_the_baseline(tmp_path):
    seeds = (0, 1, 2)
    base = [_run(tmp_path / f"base-s{s}", 20 + s) for s in seeds]  # 20, 21, 22 of 40 right
    better = [_run(tmp_path / f"better-s{s}", 30 + 2 * s) for s in seeds]  # 30, 32, 34: 10, 11, 12 more each seed
    same = [_run(tmp_path / f"same-s{s}", 20 + s) for s in seeds]
    older = [_run(tmp_path / f"older-s{s}", 21) for s in seeds]
    for d in older:
        (d / "test_predictions.csv").unlink()  # a run from before predictions were written
    md, csv_path = write_table({"Multimodal Baseline": base, "Better": better, "Same": same, "Older": older},
                               tmp_path / "out", "avdigits", "test")
    text = md.read_text()
    d = [10 / 40, 11 / 40, 12 / 40]
    low, high = stats.t.interval(0.95, 2, loc=sum(d) / 3, scale=stats.sem(d))
    p_seeds = stats.ttest_rel([30 / 40, 32 / 40, 34 / 40], [20 / 40, 21 / 40, 22 / 40]).pvalue
    p_samples = stats.binomtest(0, 33, 0.5).pvalue  # 10 + 11 + 12 samples only Better gets right
    assert p_seeds < 0.01 and p_samples < 0.01
    assert (f"| Better | +27.50 [{100 * low:+.2f}, {100 * high:+.2f}] | {p_seeds:.3f}** | {p_samples:.3g}** |"
            in text), text
    assert "| Same | +0.00 [+0.00, +0.00] | 1.000 | 1 |" in text
    assert "| Older | +0.00 [-6.21, +6.21] | 1.000 | - (no predictions) |" in text
    assert "With 3 seeds the interval spans ±2.48 standard deviations" in text
    diff = {r["method"]: r for r in csv.DictReader(csv_path.open()) if r["branch"] == "diff:Multimodal Baseline"}
    assert set(diff) == {"Better", "Same", "Older"}
    assert float(diff["Better"]["delta_low"]) == pytest.approx(low) and float(diff["Better"]["p_samples"]) == pytest.approx(p_samples)
    assert diff["Better"]["samples"] == "40" and diff["Older"]["samples"] == "0"
