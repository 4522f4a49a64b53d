"""`cli.py predict` and `mmsent.load_run`: the selected model's per-sample predictions are the ones
its results.json scored (metrics recomputed here from the CSV, by hand), on the run's own data and
on a new file; data without the run's modalities or widths is one line."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

SMALL = ["data.n_train=64", "data.n_val=32", "data.n_test=40", "data.batch_size=16", "model.dim=8", "model.hidden=16",
         "model.seq_len=2", "train.probe=false", "train.grad_probe=false"]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def features(path: Path, widths: dict, seed: int) -> Path:
    """A feature file of the `features` dataset: 3 splits, the given modality widths, a score label."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 48), ("valid", 16), ("test", 24)):
        w = rng.normal(size=sum(widths.values()))
        xs = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in widths.items()}
        arrays.update({f"{split}/{m}": x for m, x in xs.items()})
        arrays[f"{split}/regression_labels"] = np.concatenate(list(xs.values()), 1) @ w
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_predictions_are_what_results_json_scored(tmp_path, task, capsys):
    run = tmp_path / "run"
    extra = ["data.task=classification", "data.num_classes=3"] if task == "classification" else []
    assert cli.main(["train", "--quiet", "--strategy", "dgl", "--epochs", "3", "--out", str(run), *SMALL, *extra]) == 0
    res = json.loads((run / "results.json").read_text())
    assert cli.main(["predict", "--run", str(run), "--out", str(tmp_path / "p.csv")]) == 0
    assert "wrote" in capsys.readouterr().out
    got = rows(tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == (run / "test_predictions.csv").read_text()  # fit wrote the same
    assert len(got) == 40 and list(got[0])[:6] == ["id", "label", "multi", "text", "audio", "vision"]
    for branch in ("multi", "text", "audio", "vision"):
        y = np.array([float(r["label"]) for r in got])
        p = np.array([float(r[branch]) for r in got])
        if task == "regression":  # MAE and Pearson's r by hand
            assert np.mean(np.abs(p - y)) == pytest.approx(res["test"][branch]["mae"], rel=1e-5)
            assert np.corrcoef(p, y)[0, 1] == pytest.approx(res["test"][branch]["corr"], abs=1e-5)
        else:
            assert np.mean(p == y) == pytest.approx(res["test"][branch]["acc"], abs=1e-9)
    if task == "classification":
        probs = np.array([[float(r[f"p_{c}"]) for c in range(3)] for r in got])
        assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == [int(r["multi"]) for r in got]).all()


def test_load_run_predicts_on_new_data_and_refuses_other_modalities(tmp_path, capsys):
    import mmsent

    train_file = features(tmp_path / "a.npz", {"x": 5, "y": 3}, 0)
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "features", "--data", str(train_file), "--epochs", "2",
                     "--out", str(run), "model.dim=8", "model.hidden=8", "data.batch_size=16"]) == 0
    other = features(tmp_path / "b.npz", {"x": 5, "y": 3}, 1)
    loaded = mmsent.load_run(run, data=other)
    preds = loaded.predictions(loaded.dataset.test)
    assert set(preds) == {"multi", "x", "y"} and preds["multi"].shape == (24, 1)
    assert cli.main(["predict", "--run", str(run), "--data", str(other), "--split", "val",
                     "--out", str(tmp_path / "v.csv")]) == 0
    assert [r["multi"] for r in rows(tmp_path / "v.csv")] == [
        repr(float(v)) for v in loaded.predictions(loaded.dataset.val)["multi"][:, 0]]
    capsys.readouterr()
    for widths, said in (({"x": 5, "y": 4}, "modality 'y' has width 4; the run was trained on width 3"),
                         ({"x": 5, "z": 3}, "has no modality 'y' (the run was trained on x, y; this data has x, z)")):
        bad = features(tmp_path / "bad.npz", widths, 2)
        assert cli.main(["predict", "--run", str(run), "--data", str(bad), "--out", str(tmp_path / "bad.csv")]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"error: {bad}: {said}" and not (tmp_path / "bad.csv").exists()
    assert cli.main(["predict", "--run", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    assert f"{tmp_path}: not a run directory" in capsys.readouterr().err
