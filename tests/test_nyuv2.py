"""NYUv2: ``data prepare nyuv2`` and ``--dataset nyuv2`` on a synthetic labelled file in MATLAB's
transposed HDF5 layout, on the real split / class-mapping files and real 40-class test labels of
``../shared/data/nyuv2-meta``, bad input in one line, and ESANet-style augmentation that keeps RGB,
depth and labels aligned."""
import io
import json
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.config import load_config  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.data.av_decode import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from mmsent.data.nyuv2 import prepare_nyuv2  # noqa: E402
from mmsent.tasks import VOID  # noqa: E402

META = ROOT.parent / "shared" / "data" / "nyuv2-meta"
H, W = 16, 32
TINY = ["data.height=16", "data.width=32", "data.batch_size=4", "model.width=4", "model.hidden=16",
        "model.blocks=[1,1,1]", "data.num_workers=0"]


def write_labelled(path: Path, rgb: np.ndarray, depth: np.ndarray, raw_depth: np.ndarray, labels: np.ndarray) -> None:
    """A file laid out as nyu_depth_v2_labeled.mat: frames given as (N, H, W[, 3]) stored transposed,
    images (N, 3, W, H) uint8, depths / rawDepths (N, W, H) float32 metres, labels (N, W, H) uint16."""
    with h5py.File(path, "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1).astype(np.float32)
        f["rawDepths"] = raw_depth.transpose(0, 2, 1).astype(np.float32)
        f["labels"] = labels.transpose(0, 2, 1).astype(np.uint16)


def frames(n: int, seed: int = 0, n_raw: int = 12):
    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    depth = g.uniform(0.5, 9.0, (n, H, W)).astype(np.float32)
    raw = np.where(g.random((n, H, W)) < 0.2, 0.0, depth + g.normal(0, 0.01, (n, H, W))).astype(np.float32)
    labels = g.integers(0, n_raw + 1, (n, H, W)).astype(np.uint16)  # 0 = void
    return rgb, depth, raw, labels


@pytest.fixture
def corpus(tmp_path):
    """12 frames, 8 train / 4 test, 12 raw classes mapped onto the 40 (raw r -> 40-class (3r mod 40) + 1)."""
    rgb, depth, raw, labels = frames(12)
    write_labelled(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth, raw, labels)
    train, test = [1, 2, 3, 5, 6, 8, 9, 11], [4, 7, 10, 12]
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array(train, np.uint16)[:, None],
                                               "testNdxs": np.array(test, np.uint16)[:, None]})
    mapping = np.array([(3 * r) % 40 + 1 for r in range(1, 13)], np.uint8)
    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": mapping[None]})
    return tmp_path, dict(rgb=rgb, depth=depth, raw=raw, labels=labels, train=train, test=test, mapping=mapping)


def prepare_args(d: Path, out: Path, **change) -> list[str]:
    files = {"mat": d / "nyu_depth_v2_labeled.mat", "splits": d / "splits.mat", "mapping": d / "classMapping40.mat",
             **change}
    return ["data", "prepare", "nyuv2", *(f"{k}={v}" for k, v in files.items()), f"out={out}"]


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_prepare_writes_the_common_layout(corpus):
    d, c = corpus
    out = d / "prepared"
    assert cli.main(prepare_args(d, out)) == 0
    assert (out / "train.txt").read_text().split() == [f"{i:04d}" for i in c["train"]]
    assert (out / "test.txt").read_text().split() == [f"{i:04d}" for i in c["test"]]
    lut = np.concatenate([[0], c["mapping"]])
    for split, ids in (("train", c["train"]), ("test", c["test"])):
        for i in ids:
            name, k = f"{i:04d}.png", i - 1
            assert np.array_equal(png(out / split / "rgb" / name), c["rgb"][k])
            depth = png(out / split / "depth" / name)
            assert depth.dtype == np.uint16 and np.array_equal(depth, np.rint(c["depth"][k] * 1000).astype(np.uint16))
            assert np.array_equal(png(out / split / "depth_raw" / name), np.rint(c["raw"][k] * 1000).astype(np.uint16))
            assert np.array_equal(png(out / split / "labels_40" / name), lut[c["labels"][k]])
    assert not list(out.rglob("*.tmp"))


def test_an_interrupted_prepare_continues_where_it_stopped(corpus):
    d, c = corpus
    whole, cut = d / "whole", d / "cut"
    prepare_nyuv2(d / "nyu_depth_v2_labeled.mat", d / "splits.mat", d / "classMapping40.mat", whole)

    def stop_after_five(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_nyuv2(d / "nyu_depth_v2_labeled.mat", d / "splits.mat", d / "classMapping40.mat", cut, stop_after_five)
    assert not (cut / "train.txt").exists()  # visibly unfinished
    assert len(list((cut / "train" / "rgb").glob("*.png"))) == 5
    before = (cut / "train" / "rgb" / "0001.png").stat().st_mtime_ns
    seen = []
    prepare_nyuv2(d / "nyu_depth_v2_labeled.mat", d / "splits.mat", d / "classMapping40.mat", cut, lambda k, n: seen.append(k))
    assert (cut / "train" / "rgb" / "0001.png").stat().st_mtime_ns == before  # a finished frame is not rewritten
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(cut) for p in cut.rglob("*") if p.is_file())
    assert all((whole / f).read_bytes() == (cut / f).read_bytes() for f in files)


def _config(data: Path, *extra):
    return load_config(ROOT / "configs/nyuv2.yaml", [f"data.path={data}", *TINY, *extra])


def test_splits_normalisation_and_equal_sources(corpus):
    d, c = corpus
    out = d / "prepared"
    assert cli.main(prepare_args(d, out)) == 0
    a, b = (build_dataset(_config(p, "data.valid_fraction=0.25").data) for p in (out, d / "nyu_depth_v2_labeled.mat"))
    for ds in (a, b):  # every 4th train frame (by id) is validation; test is NYUv2's own
        assert ds.val.ids == ["0005", "0011"] and ds.train.ids == ["0001", "0002", "0003", "0006", "0008", "0009"]
        assert ds.test.ids == ["0004", "0007", "0010", "0012"] and ds.num_classes == 40
        assert ds.class_weights.shape == (40,) and ds.dims == {"rgb": 3, "depth": 1}
    x, y = a.test.batch(torch.arange(4)), b.test.batch(torch.arange(4))
    assert torch.equal(x.y, y.y) and torch.equal(x.x["rgb"], y.x["rgb"])
    # depth: millimetre PNGs against float metres, the same up to 0.5 mm
    torch.testing.assert_close(x.x["depth"], y.x["depth"], rtol=0, atol=1e-3)
    # the oracle, from the fixture's own arrays (native size, no augmentation on test frames)
    lut = np.concatenate([[0], c["mapping"]]).astype(np.int64) - 1
    want_y = torch.from_numpy(lut[c["labels"][np.array(c["test"]) - 1]])
    assert torch.equal(x.y, torch.where(want_y < 0, torch.full_like(want_y, VOID), want_y))
    want_rgb = (c["rgb"][np.array(c["test"]) - 1] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(x.x["rgb"], torch.from_numpy(want_rgb.transpose(0, 3, 1, 2)).float(), rtol=0, atol=1e-5)
    # depth: the raw readings, standardised by the valid readings of the 6 train frames; holes stay 0
    train_raw = c["raw"][np.array([1, 2, 3, 6, 8, 9]) - 1]
    valid = train_raw[train_raw > 0].astype(np.float64)
    raw = c["raw"][np.array(c["test"]) - 1]
    want_d = np.where(raw > 0, (raw - valid.mean()) / valid.std(), 0.0)[:, None]
    torch.testing.assert_close(y.x["depth"], torch.from_numpy(want_d).float(), rtol=0, atol=1e-4)
    assert (x.x["depth"][torch.from_numpy(raw[:, None] == 0)] == 0).all()


def test_augmentation_moves_rgb_depth_and_labels_together(tmp_path):
    """Left half: class 1, red, no depth reading; right half: class 2, blue, one distance per frame.
    Whatever the rescale, crop and flip, a pixel labelled 1 has no depth and a red colour, one
    labelled 2 its frame's reading and a blue colour; one seed gives one batch, another a different one."""
    n = 6
    rgb = np.zeros((n, H, W, 3), np.uint8)
    rgb[:, :, : W // 2, 0], rgb[:, :, W // 2:, 2] = 200, 200
    depth = np.zeros((n, H, W), np.float32)
    depth[:, :, W // 2:] = 1.5 + 0.5 * np.arange(n)[:, None, None]
    labels = np.zeros((n, H, W), np.uint16)
    labels[:, :, : W // 2], labels[:, :, W // 2:] = 1, 2
    write_labelled(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth, depth, labels)
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.arange(1, 5)[:, None], "testNdxs": np.array([[5], [6]])})
    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": np.array([[1, 2]], np.uint8)})
    ds = build_dataset(_config(tmp_path / "nyu_depth_v2_labeled.mat", "data.valid_fraction=0.5").data)
    flips = set()
    for seed in range(12):
        b = ds.train.batch(torch.arange(2), seed=seed)
        y, d, x = b.y, b.x["depth"][:, 0], b.x["rgb"]
        assert set(y.unique().tolist()) <= {0, 1}
        assert (d[y == 0] == 0).all() and (d[y == 1] != 0).all()
        assert all(torch.equal(d[i][y[i] == 1], d[i][y[i] == 1][:1].expand(int((y[i] == 1).sum()))) for i in range(2))
        red, blue = x[:, 0] - x[:, 2], x[:, 2] - x[:, 0]
        inner = y[:, :, 2:-2]  # off the blurred boundary
        assert (red[:, :, 2:-2][(inner == 0) & (inner.roll(2, -1) == 0) & (inner.roll(-2, -1) == 0)] > 0).all()
        assert (blue[:, :, 2:-2][(inner == 1) & (inner.roll(2, -1) == 1) & (inner.roll(-2, -1) == 1)] > 0).all()
        flips.add(bool(y[0, 0, 0] == 1))  # a flipped frame starts with class 2 (index 1)
        assert torch.equal(b.x["rgb"], ds.train.batch(torch.arange(2), seed=seed).x["rgb"])
    assert flips == {True, False}
    assert not torch.equal(ds.train.batch(torch.arange(2), seed=0).x["rgb"], ds.train.batch(torch.arange(2), seed=1).x["rgb"])


def test_train_with_dgl_on_a_prepared_folder_and_on_the_mat(corpus, tmp_path):
    d, _ = corpus
    assert cli.main(prepare_args(d, d / "prepared")) == 0
    for data in (d / "prepared", d / "nyu_depth_v2_labeled.mat"):
        out = tmp_path / f"run-{data.suffix or 'dir'}"
        args = ["train", "--quiet", "--data", str(data), "--strategy", "dgl", "--epochs", "1", "--out", str(out),
                "data.valid_fraction=0.25", *TINY]
        if data.suffix:  # a .mat is not recognised from its path: --dataset says what it is
            args[2:2] = ["--dataset", "nyuv2"]
        assert cli.main(args) == 0, data
        res = json.loads((out / "results.json").read_text())
        assert res["task"] == "segmentation" and set(res["test"]) == {"multi", "rgb", "depth"}
        assert 0 <= res["test"]["multi"]["miou"] <= 1


def test_bad_input_is_one_line_and_writes_nothing(corpus, capsys):
    d, _ = corpus
    scipy.io.savemat(d / "far.mat", {"trainNdxs": np.array([[1], [99]]), "testNdxs": np.array([[2]])})
    scipy.io.savemat(d / "nomap.mat", {"className": np.array([["wall"]])})
    (d / "broken.mat").write_bytes(b"\x00" * 64)
    cases = [
        (dict(mat=d / "absent.mat"), "labelled NYUv2 file not found"),
        (dict(mat=d / "splits.mat"), "not a MATLAB v7.3 (HDF5) file"),
        (dict(splits=d / "far.mat"), "frame 99 is beyond the 12 frames"),
        (dict(mapping=d / "nomap.mat"), "class mapping has no 'mapClass'"),
        (dict(splits=d / "broken.mat"), "not a readable MATLAB file (split file)"),
        (dict(splits=d / "absent.mat"), "split file not found"),
    ]
    for change, said in cases:
        out = d / "out"
        assert cli.main(prepare_args(d, out, **change)) == 2, change
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, (change, err)
        assert not out.exists()
    assert cli.main(["data", "prepare", "nyuv2", f"out={d / 'out'}"]) == 2
    assert "needs mat=FILE splits=FILE mapping=FILE" in capsys.readouterr().err
    # a prepared folder with a frame missing: named before any run folder exists
    assert cli.main(prepare_args(d, d / "prepared")) == 0
    (d / "prepared" / "test" / "depth_raw" / "0010.png").unlink()
    run = d / "run"
    assert cli.main(["train", "--dataset", "nyuv2", "--data", str(d / "prepared"), "--out", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "test/depth_raw/0010.png: missing (1 of the 4 frames test.txt lists" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def _real_labels(frames: list[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
    """The shared REAL 40-class test label maps of ``frames``, nearest-resized to ``size`` (h, w)."""
    out = {}
    with tarfile.open(META / "nyuv2_test_class40.tgz") as tar:
        for m in tar.getmembers():
            stem = Path(m.name).stem
            if stem.startswith("new_nyu_class40_") and int(stem[-4:]) in frames:
                with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                    out[int(stem[-4:])] = np.asarray(im.resize(size[::-1], Image.NEAREST))
    return out


@pytest.mark.skipif(not META.is_dir(), reason="needs ../shared/data/nyuv2-meta")
def test_prepare_on_the_real_split_mapping_and_test_labels(tmp_path):
    """NYUv2's own splits.mat (795 / 654 of 1449 frames) and classMapping40.mat (894 -> 40); the raw
    labels of six real test frames are chosen so that the mapping must give back their real
    40-class maps."""
    n = 1449
    mapping = scipy.io.loadmat(META / "classMapping40.mat")["mapClass"].ravel()
    raw_of = {c: int(np.flatnonzero(mapping == c)[0]) + 1 for c in range(1, 41)}  # one raw class per 40-class id
    real = _real_labels([1, 2, 9, 14, 15, 16], (H, W))
    assert len(real) == 6 and all(r.max() <= 40 for r in real.values())
    rgb, depth, raw, labels = frames(n, seed=3, n_raw=894)
    for frame, lab in real.items():
        labels[frame - 1] = np.vectorize(lambda c: raw_of.get(int(c), 0))(lab)
    write_labelled(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth, raw, labels)
    out = tmp_path / "prepared"
    assert cli.main(["data", "prepare", "nyuv2", f"mat={tmp_path / 'nyu_depth_v2_labeled.mat'}",
                     f"splits={META / 'splits.mat'}", f"mapping={META / 'classMapping40.mat'}",
                     f"out={out}"]) == 0
    assert len((out / "train.txt").read_text().split()) == 795 and len((out / "test.txt").read_text().split()) == 654
    for frame, lab in real.items():
        assert np.array_equal(png(out / "test" / "labels_40" / f"{frame:04d}.png"), lab), frame
    ds = build_dataset(_config(out).data)  # the recipe's validation: every 10th of the 795 train frames
    assert (len(ds.train), len(ds.val), len(ds.test)) == (716, 79, 654)
    assert not set(ds.val.ids) & set(ds.test.ids) and not set(ds.train.ids) & set(ds.val.ids)


def test_worker_processes_read_the_same_frames(corpus):
    """data.num_workers > 0: each worker opens the labelled file itself (an h5py handle does not
    cross processes) and the batches, augmentation included, are the ones one process makes."""
    d, _ = corpus
    mat = d / "nyu_depth_v2_labeled.mat"
    one, two = (build_dataset(_config(mat, "data.valid_fraction=0.25", f"data.num_workers={w}").data) for w in (0, 2))
    for split in ("train", "test"):
        a = list(getattr(one, split).batches(3, shuffle=True, generator=torch.Generator().manual_seed(4)))
        b = list(getattr(two, split).batches(3, shuffle=True, generator=torch.Generator().manual_seed(4)))
        assert len(a) == len(b) > 1
        for x, y in zip(a, b):
            assert x.ids == y.ids and torch.equal(x.y, y.y) and torch.equal(x.x["rgb"], y.x["rgb"])
            assert torch.equal(x.x["depth"], y.x["depth"])
