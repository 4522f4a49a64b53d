"""DGL through a mixing head at N = 6 (the collapse, as a regression test), any-key N-modality data
from the CLI, and the linear probes on cases whose answer is known."""
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.config import load_config  # noqa: E402
from mmsent.probe import fit_probe  # noqa: E402
from mmsent.tasks import Classification, Regression  # noqa: E402
from mmsent.train import fit  # noqa: E402


def six_views(path: Path, classes: int = 4, dim: int = 8, seed: int = 0, keys=None) -> Path:
    """Six views, each predicting the class on its own (class centre + noise), in the MMSA layout."""
    rng = np.random.default_rng(seed)
    keys = keys or [f"v{i}" for i in range(6)]
    centres = rng.normal(size=(len(keys), classes, dim))

    def split(n):
        y = rng.integers(0, classes, n)
        return {**{k: (centres[i][y] * 0.8 + rng.normal(size=(n, dim))).astype(np.float32) for i, k in enumerate(keys)},
                "classification_labels": y, "id": [f"c{i}" for i in range(n)]}

    path.write_bytes(pickle.dumps({"train": split(400), "valid": split(200), "test": split(200)}))
    return path


def branches(tmp_path, data, strategy):
    cfg = load_config(None, ["data.dataset=features", f"data.path={data}", f"strategy={strategy}", "train.epochs=8",
                             "train.patience=100", "model.dim=16", "model.hidden=32", "model.seq_len=2",
                             "data.batch_size=32", "train.probe=false", f"out={tmp_path / strategy}"])
    res = fit(cfg, quiet=True)
    return {b: v["acc"] for b, v in res["test"].items() if b != "multi"}


def test_dgl_mh_keeps_every_branch_of_a_six_view_mixer_above_chance(tmp_path):
    """The collapse: with the MLP-Mixer head, DGL's masked passes drift and its branches fall to
    chance (0.25 here); DGL-MH, whose head also fits the masked passes, keeps each view's branch."""
    data = six_views(tmp_path / "six.pkl")
    mh = branches(tmp_path, data, "dgl_mh")
    dgl = branches(tmp_path, data, "dgl")
    assert min(mh.values()) > 0.5, mh
    assert np.mean(list(mh.values())) > np.mean(list(dgl.values())) + 0.2, (mh, dgl)


def test_six_arbitrary_keys_and_ten_classes_train_from_the_cli(tmp_path):
    keys = ["eeg", "emg", "gaze", "pupil", "skin", "heart"]
    data = six_views(tmp_path / "mine.pkl", classes=10, keys=keys)
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--data", str(data), "--fusion", "mlpmixer", "--strategy", "dgl_mh",
                     "--epochs", "2", "--out", str(out), "model.dim=8", "model.hidden=16", "model.seq_len=2"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "classification" and set(res["test"]) == {"multi", *keys} and set(res["probe"]) == set(keys)
    assert res["config"]["data"]["dataset"] == "features"
    # the same arrays as an .npz of <split>/<key> arrays (no pickle) load the same way
    raw = pickle.loads(data.read_bytes())
    npz = tmp_path / "mine.npz"
    np.savez(npz, **{f"{s}/{k}": np.asarray(v) for s, part in raw.items() for k, v in part.items()})
    from mmsent.data import load_mmsa

    a, b = load_mmsa(data, sentiment=False, task="auto"), load_mmsa(npz, sentiment=False, task="auto")
    assert a.dims == b.dims and torch.equal(a.test.x["gaze"], b.test.x["gaze"]) and b.num_classes == 10


def test_probe_of_a_perfect_and_of_a_useless_representation():
    rng = np.random.default_rng(0)
    y = {s: rng.integers(0, 3, n) for s, n in (("train", 300), ("val", 100), ("test", 100))}
    onehot = {s: np.eye(3)[v] * 5 + rng.normal(scale=0.1, size=(len(v), 3)) for s, v in y.items()}
    noise = {s: rng.normal(size=(len(v), 4)) for s, v in y.items()}
    good, bad = fit_probe(Classification(3), onehot, y), fit_probe(Classification(3), noise, y)
    assert good["test"]["acc"] == 1.0 and good["val"]["acc"] == 1.0
    assert 0.2 < bad["test"]["acc"] < 0.5  # chance is 1/3
    # regression: y exactly linear in x -> the weakest ridge is chosen and the probe is exact
    x = {s: rng.normal(size=(n, 2)) for s, n in (("train", 200), ("val", 50), ("test", 50))}
    t = {s: (2 * v[:, 0] - v[:, 1] + 0.5).astype(np.float32) for s, v in x.items()}
    lin = fit_probe(Regression(), x, t)
    assert lin["reg"] == 1e-2 and lin["test"]["corr"] > 0.9999 and lin["test"]["mae"] < 0.01


def test_probe_standardises_with_train_statistics_only():
    """A shift of the test features that train does not have must reach the probe unchanged."""
    rng = np.random.default_rng(1)
    y = {s: rng.integers(0, 2, n) for s, n in (("train", 200), ("val", 100), ("test", 100))}
    x = {s: (v[:, None] * 4.0 + rng.normal(scale=0.3, size=(len(v), 1))) for s, v in y.items()}
    shifted = {**x, "test": x["test"] + 100.0}  # standardising test by its own stats would hide this
    assert fit_probe(Classification(2), x, y)["test"]["acc"] > 0.95
    assert fit_probe(Classification(2), shifted, y)["test"]["acc"] == pytest.approx(np.mean(y["test"] == 1))
