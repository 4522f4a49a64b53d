"""Per-pixel linear probes of dense encoders: scored on every labelled location of test against an
oracle worked from the labels, and recorded by a segmentation run."""
import torch
from torch import nn

from mmsent.data.batch import Dataset, Split
from mmsent.models.dense import DenseHead
from mmsent.models.model import MultimodalModel
from mmsent.probe import probe_pixels
from mmsent.tasks import VOID, Segmentation


class Passthrough(nn.Module):
    """An 'encoder' whose feature map is its input, at stride 2 (every other pixel)."""

    def forward(self, x, mask=None):
        return x[..., ::2, ::2]


def _split(n: int, g: torch.Generator) -> Split:
    """4 classes on 8 x 8 maps; the 'rgb' features one-hot code classes 0, 1, 2, and class 3 gets
    class 2's code (indistinguishable); 'depth' is noise. Class 2 is twice as common as class 3."""
    y = torch.multinomial(torch.tensor([0.3, 0.2, 0.33, 0.17]), n * 64, replacement=True, generator=g).view(n, 8, 8)
    y[torch.rand(n, 8, 8, generator=g) < 0.1] = VOID
    code = torch.where(y == 3, 2, y).clamp(min=0)
    rgb = nn.functional.one_hot(code, 3).permute(0, 3, 1, 2).float() + 0.01 * torch.randn(n, 3, 8, 8, generator=g)
    depth = torch.randn(n, 1, 8, 8, generator=g)
    ones = torch.ones(n, 1, dtype=torch.bool)
    return Split({"rgb": rgb, "depth": depth}, {"rgb": ones, "depth": ones}, y, [str(i) for i in range(n)])


def test_a_pixel_probe_is_scored_on_every_test_location_as_the_labels_say():
    g = torch.Generator().manual_seed(0)
    ds = Dataset(train=_split(60, g), val=_split(20, g), test=_split(30, g), task="segmentation", num_classes=4,
                 dims={"rgb": 3, "depth": 1}, kinds={"rgb": "dense", "depth": "dense"})
    model = MultimodalModel({"rgb": Passthrough(), "depth": Passthrough()}, DenseHead(["rgb", "depth"], 3, 1, 4))
    out = probe_pixels(model, ds, Segmentation(4), batch_size=7, sample=2000)
    # the oracle, from the test labels at the features' resolution: classes 0 and 1 exact, class 3
    # read as class 2 (the more common of the two sharing a code)
    y = ds.test.y[:, ::2, ::2]
    n2, n3, n = int((y == 2).sum()), int((y == 3).sum()), int((y != VOID).sum())
    test = out["rgb"]["test"]
    assert abs(test["miou"] - (2 + n2 / (n2 + n3)) / 4) < 1e-9, (test, n2, n3)
    assert abs(test["pixel_acc"] - (n - n3) / n) < 1e-9
    assert out["rgb"]["pixels"] <= 2000 + 60 and out["rgb"]["reg"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    assert out["depth"]["test"]["miou"] < 0.3  # noise features: near chance


def test_a_segmentation_run_records_its_pixel_probes(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "rgbd_scenes", "--epochs", "1", "--out", str(out), "train.probe=true",
                     "data.n_train=24", "data.n_val=8", "data.n_test=8", "data.height=16", "data.width=20",
                     "model.width=4", "model.hidden=8"]) == 0
    probe = json.loads((out / "results.json").read_text())["probe"]
    assert set(probe) == {"rgb", "depth"}
    assert all(0 <= p["test"]["miou"] <= 1 and 0 <= p["val"]["pixel_acc"] <= 1 for p in probe.values())


def test_the_probe_as_one_linear_map_equals_scikit_learns_on_standardised_features():
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from mmsent.probe import _linear

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [1.0, 5.0, 0.2], (200, 3))
    mean, std = x.mean(0), x.std(0)
    for labels in (rng.integers(0, 3, 200) * 2, (x[:, 0] > 3).astype(int) + 1):  # classes {0, 2, 4}; {1, 2}
        probe = LogisticRegression(C=1.0, max_iter=500).fit((x - mean) / std, labels)
        w, b = _linear(probe, mean, std, 5)
        logits = (torch.from_numpy(x) @ w.T + b).numpy()
        d = probe.decision_function((x - mean) / std)
        if d.ndim == 1:  # binary: scikit-learn's score is for classes_[1]
            np.testing.assert_allclose(logits[:, 2] - logits[:, 1], d, rtol=1e-9, atol=1e-9)
        else:
            np.testing.assert_allclose(logits[:, probe.classes_], d, rtol=1e-9, atol=1e-9)
        unseen = [c for c in range(5) if c not in probe.classes_]
        assert (logits[:, unseen] <= -1e8).all()
        np.testing.assert_array_equal(logits.argmax(1), probe.predict((x - mean) / std))
