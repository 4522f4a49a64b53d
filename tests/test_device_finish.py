"""The audio-visual loader can leave the STFT, the cached frames' crop and their normalisation for
the device (``Batch.finish``, ``data.finish``): the crop resizes as PIL does, a batch finished
after ``Batch.to`` (sliced first or not, from worker processes or not) is the batch the loader
would have finished, and a run with the work on the device trains exactly as one without."""
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.data.av import ClipSet  # noqa: E402
from mmsent.data.av_decode import IMAGENET_MEAN, IMAGENET_STD, crop_frames, random_resized_crop  # noqa: E402
from test_av_data import SMALL, cremad_cfg, make_cremad  # noqa: E402


def _pil(img: np.ndarray, size: int, box, flip: bool) -> np.ndarray:
    with Image.fromarray(img) as im:
        out = im.resize((size, size), Image.BILINEAR, box=box)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(out).astype(np.float32)


def _grey_levels(x: torch.Tensor) -> np.ndarray:
    """crop_frames' (N, 3, s, s) output back in PIL's units (0..255, HWC)."""
    x = x.permute(0, 2, 3, 1).numpy()
    return (x * IMAGENET_STD + IMAGENET_MEAN) * 255.0


@pytest.mark.parametrize("stored,size", [(40, 32), (24, 32), (32, 32), (7, 5)])
def test_the_crop_resizes_as_pil_does(stored, size):
    """PIL (an independent implementation) is the oracle: its resize with a box, then a mirror.
    PIL rounds to whole grey levels after each of its two passes, so one level apart at most."""
    rng = np.random.default_rng(stored)
    n = 12
    smooth = np.linspace(0, 255, stored)[None, :, None] * np.ones((n, stored, 1, 3))
    imgs = np.clip(smooth.transpose(0, 2, 1, 3) * 0.5 + rng.integers(0, 128, (n, stored, stored, 3)), 0, 255).astype(np.uint8)
    boxes = [random_resized_crop(stored, stored, rng) for _ in range(n)]
    flips = [bool(rng.random() < 0.5) for _ in range(n)]
    flips[0], flips[1] = True, False
    got = _grey_levels(crop_frames(torch.from_numpy(imgs), torch.tensor(boxes), torch.tensor(flips), size))
    want = np.stack([_pil(imgs[i], size, boxes[i], flips[i]) for i in range(n)])
    assert np.abs(got - want).max() <= 1.0 + 1e-3
    assert np.abs(got - want).mean() < 0.5  # rounding, not a shifted grid
    # evaluation: the whole frame, no mirror (PIL's plain resize)
    got = _grey_levels(crop_frames(torch.from_numpy(imgs), None, None, size))
    want = np.stack([_pil(imgs[i], size, None, False) for i in range(n)])
    assert np.abs(got - want).max() <= 1.0 + 1e-3


def _same(a, b) -> None:
    assert a.ids == b.ids and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)
    assert a.x.keys() == b.x.keys() and all(torch.equal(a.x[m], b.x[m]) for m in a.x), a.ids
    assert a.finish is None and b.finish is None and not a.later and not b.later


@pytest.mark.parametrize("cached", [True, False])
def test_a_batch_finished_on_the_device_is_the_loaders(tmp_path, cached):
    root = make_cremad(tmp_path / "CREMA-D")
    extra = [f"data.cache={tmp_path / 'cache'}", "data.cache_size=56"] if cached else []
    for workers in (0, 2):
        device = build_dataset(cremad_cfg(root, *extra, f"data.num_workers={workers}", "data.finish=device").data)
        loader = build_dataset(cremad_cfg(root, *extra, f"data.num_workers={workers}", "data.finish=loader").data)
        for split in ("train", "val"):
            d, l = getattr(device, split), getattr(loader, split)
            gen = (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))
            left = list(d.batches(2, shuffle=True, generator=gen[0], deferred=True))
            done = list(l.batches(2, shuffle=True, generator=gen[1], deferred=True))
            assert len(left) == len(done) > 1
            for a, b in zip(left, done, strict=True):
                assert a.finish is not None and a.x["audio"].dim() == 2  # waveforms reach the "device"
                assert (a.x["visual"].dtype == torch.uint8) == cached
                assert ("box" in a.later) == (cached and split == "train")
                _same(a.to("cpu"), b)
                with torch.autocast("cpu", dtype=torch.bfloat16):  # the loop moves batches in its bfloat16 region
                    _same(a.to("cpu"), b)
                rows = torch.arange(len(a)).flip(0)[:2]  # reordered, and cut when longer
                _same(a.select(rows).to("cpu"), b.select(rows))  # a torchrun shard finishes on its own rank
            # batches nobody moves are finished where they are made, whatever the setting
            _same(d.batch(torch.arange(3)), l.batch(torch.arange(3), deferred=True))


def test_training_with_the_work_on_the_device_trains_as_with_it_in_the_loader(tmp_path, monkeypatch, capsys):
    """Same metrics, selected epoch and test scores (probes included); and the device run did
    leave the work for the device, for training, evaluation and probe batches alike."""
    root = make_cremad(tmp_path / "CREMA-D")
    left = []
    real = ClipSet.__getitem__

    import mmsent

    package = Path(mmsent.__file__).resolve().parent  # by location, not by name: a clone may be called mmsent/

    def spy(self, key):  # who asked (the first caller outside the data package), and whether work was left
        caller = next(f.function for f in inspect.stack()
                      if Path(f.filename).resolve().is_relative_to(package)
                      and not Path(f.filename).resolve().is_relative_to(package / "data"))
        left.append((caller, key[0]))
        return real(self, key)

    monkeypatch.setattr(ClipSet, "__getitem__", spy)
    runs = {}
    for where in ("device", "loader"):
        left.clear()
        out = tmp_path / where
        assert cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--out", str(out), "--epochs", "2",
                         "--strategy", "dgl", f"data.cache={tmp_path / 'cache'}", f"data.finish={where}", *SMALL[1:],
                         "data.image_size=32", "data.cache_size=40"]) == 0
        runs[where] = json.loads((out / "results.json").read_text()), (out / "metrics.jsonl").read_text().splitlines()
        callers = {c for c, _ in left}
        if where == "device":  # every batch the run moves left its work for the device, wherever it was asked for
            assert {c for c, leave in left if not leave} == {"build_model"}, left  # its shape probe is not moved
            assert {"train_epoch", "my_batches", "encoder_features"} <= callers, callers  # train, evaluate, probe
        else:
            assert not any(leave for _, leave in left)
    (dev, dev_log), (ldr, ldr_log) = runs["device"], runs["loader"]
    assert dev["test"] == ldr["test"] and dev["best_epoch"] == ldr["best_epoch"]
    assert dev["probe"] == ldr["probe"] and dev["val"] == ldr["val"] and set(dev["probe"]) == {"audio", "visual"}

    def scores(lines):
        rows = [json.loads(x) for x in lines]
        return [{k: v for k, v in r.items() if k not in ("seconds", "provenance") and "time" not in k} for r in rows if "epoch" in r]

    assert scores(dev_log) == scores(ldr_log) and len(scores(dev_log)) == 2
    capsys.readouterr()
    assert cli.main(["train", "--dataset", "cremad", "--data", str(root), "--out", str(tmp_path / "bad"),
                     "data.finish=gpu"]) == 2
    err = capsys.readouterr().err
    assert "data.finish" in err and "gpu" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
