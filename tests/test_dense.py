"""Dense prediction end to end: the RGB-D scenes say what each modality carries, the dense model
trains from the CLI with DGL, masked passes leave BatchNorm statistics alone, resume equals an
uninterrupted run, and what is not defined for segmentation is refused in one line."""
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from conftest import logged_epochs  # noqa: E402
from mmsent.config import load_config  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.data.rgbd_scenes import render  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.tasks import VOID, Segmentation  # noqa: E402
from mmsent.train import build_optimizer, build_strategy  # noqa: E402

SMALL = ["data.n_train=24", "data.n_val=8", "data.n_test=8", "data.height=16", "data.width=20", "data.batch_size=8",
         "model.width=4", "model.hidden=8"]


def test_scenes_hide_boxes_from_rgb_and_posters_and_rugs_from_depth():
    """A box has the wall's colour but stands in front of it; a poster (rug) has a colour of its own
    but the wall's (floor's) depth: each modality alone misses a class the other sees."""
    rgb, depth, labels = render(60, 32, 40, torch.Generator().manual_seed(1))
    seen = {c: 0 for c in (2, 3, 4)}
    for i in range(60):
        lab, d, col = labels[i], depth[i, 0], rgb[i]
        wall = (lab == 0) & (d > 0)
        wall_colour, wall_depth = col[:, lab == 0].median(1).values, d[wall].median()
        for c, near_wall in ((2, False), (3, True)):
            px = (lab == c) & (d > 0)
            if px.sum() > 3:
                seen[c] += 1
                colour_gap = (col[:, lab == c].median(1).values - wall_colour).abs().max()
                depth_gap = (d[px].median() - wall_depth).abs()
                if c == 2:  # box: the wall's colour (noise 0.05), at least 0.8 m in front
                    assert colour_gap < 0.06 and depth_gap > 0.7, (i, colour_gap, depth_gap)
                else:  # poster: on the wall's plane (noise 3 cm)
                    assert depth_gap < 0.05, (i, depth_gap)
        rug = lab == 4
        if rug.sum() > 3:
            seen[4] += 1
            rows = rug.any(1).nonzero().flatten()
            floor = (lab == 1) & (d > 0)
            for r in rows[:2]:  # on the floor: the same depth as floor pixels of its row
                if floor[r].any() and ((lab[r] == 4) & (d[r] > 0)).any():
                    assert (d[r][(lab[r] == 4) & (d[r] > 0)].median() - d[r][floor[r]].median()).abs() < 0.1
    assert min(seen.values()) >= 10  # every hard class is common enough to matter
    assert (labels == VOID).float().mean().item() < 0.03 and ((depth == 0).float().mean().item() > 0.03)


def test_dgl_trains_the_rgbd_model_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "rgbd_scenes", "--strategy", "dgl", "--epochs", "2",
                     "--out", str(out), "train.probe=true", *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "segmentation" and set(res["test"]) == {"multi", "rgb", "depth"}
    assert all(0 <= res["test"][b]["miou"] <= 1 and 0 <= res["test"][b]["pixel_acc"] <= 1 for b in res["test"])
    assert set(res["probe"]) == {"rgb", "depth"} and all("miou" in p["test"] for p in res["probe"].values())
    assert not (out / "test_predictions.csv").exists() and logged_epochs(out / "metrics.jsonl") == [0, 1]
    # resume == uninterrupted
    straight = tmp_path / "straight"
    assert cli.main(["train", "--quiet", "--dataset", "rgbd_scenes", "--strategy", "dgl", "--epochs", "3",
                     "--out", str(straight), "train.probe=true", *SMALL]) == 0
    assert cli.main(["train", "--quiet", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, out))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    # per-pixel predictions are not a per-sample CSV: one line, nothing written
    capsys.readouterr()
    assert cli.main(["predict", "--run", str(out), "--out", str(tmp_path / "p.csv")]) == 2
    assert "label maps, not a per-sample table" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_a_split_is_scored_from_batch_sums_exactly():
    """Segmentation is evaluated from per-batch sums (weighted CE, weights, confusion counts):
    any batching gives the loss and metrics of the whole split at once."""
    g = torch.Generator().manual_seed(0)
    pred, y = torch.randn(10, 4, 6, 5, generator=g), torch.randint(-1, 4, (10, 6, 5), generator=g)
    y[:, 0, 0] = 3  # class 3 present in every image
    task = Segmentation(4, class_weights=torch.tensor([0.5, 1.0, 2.0, 0.25]))
    whole = {"loss": float(task.loss(pred, y)), **task.metrics(pred, y)}
    for size in (1, 3, 10):
        sums = sum(task.summary(pred[i:i + size], y[i:i + size]) for i in range(0, 10, size))
        got = task.from_summary(sums)
        assert got.keys() == whole.keys() and all(abs(got[k] - whole[k]) < 1e-6 for k in whole), (size, got, whole)


def test_what_is_not_defined_for_segmentation_is_one_line(tmp_path, capsys):
    for args, said in ((["--strategy", "ogm_ge"], "strategy 'ogm_ge' is not defined for dense prediction"),
                       (["--fusion", "concat"], "fusion 'concat' does not predict per pixel"),
                       (["data.height=30"], "'data.height' must be a multiple of 4")):
        assert cli.main(["train", "--dataset", "rgbd_scenes", "--out", str(tmp_path / "x"), *SMALL, *args]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x").exists()
    assert cli.main(["train", "--fusion", "dense", "--out", str(tmp_path / "x")]) == 2  # dense head, feature data
    assert "predicts per pixel and needs a dense (segmentation) dataset" in capsys.readouterr().err


def test_masked_passes_leave_batchnorm_statistics_alone():
    """A DGL step moves the encoders' BatchNorm statistics exactly as one train-mode pass of the
    encoders on the batch does: the masked passes (other modality zeroed at the fusion point) add
    nothing, and the dense head has no statistics to move."""
    cfg = load_config(ROOT / "configs/rgbd_scenes.yaml", [("strategy", "dgl"), *((k, int(v)) for k, v in (o.split("=") for o in SMALL))])
    ds = build_dataset(cfg.data)
    task = Segmentation(ds.num_classes)
    model = build_model(cfg.model, ds, task.out_dim)
    strategy = build_strategy(cfg, model, build_optimizer(model, cfg.train), task)
    batch = ds.train.batch(torch.arange(8))
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        ref.encode(batch)
    strategy.train_step(batch)
    want = {k: v for k, v in ref.state_dict().items() if "running" in k}
    got = model.state_dict()
    assert want and not any("running" in k for k in model.head.state_dict())
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)


def test_a_segmentation_table_has_the_methods_defined_for_it():
    from mmsent.table import choose_rows

    rows = choose_rows("rgbd_scenes", None, None)
    assert list(rows) == ["RGB-only", "Depth-only", "Multimodal Baseline", "DGL"]


def test_a_method_not_defined_for_segmentation_is_named_when_asked_for_in_a_table(capsys):
    assert cli.main(["table", "--dataset", "rgbd_scenes", "--methods", "DGL", "OGM_GE", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "error: not defined for dense prediction: OGM_GE"
