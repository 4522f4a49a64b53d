"""The cache of decoded audio-visual inputs: its evaluation batches are the decoding path's, its
training batches stay random per epoch and reproducible, a changed setting or corpus is never read
(and the run says why), an interrupted build resumes to the same arrays, and the CLI builds and
trains from it."""
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
from mmsent.data import av_cache, build_dataset  # noqa: E402
from mmsent.data.av import checked_clips  # noqa: E402
from test_av_data import cremad_cfg, make_cremad  # noqa: E402


def _batches(split, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return list(split.batches(4, shuffle=seed is not None, generator=gen))


def test_cached_evaluation_batches_are_the_decoded_ones(tmp_path):
    root = make_cremad(tmp_path / "CREMA-D")
    plain = build_dataset(cremad_cfg(root).data)
    cached = build_dataset(cremad_cfg(root, f"data.cache={tmp_path / 'cache'}").data)
    assert cached.test.set.cache is not None and plain.test.set.cache is None
    for split in ("val", "test"):
        for a, b in zip(_batches(getattr(plain, split)), _batches(getattr(cached, split)), strict=True):
            assert a.ids == b.ids and torch.equal(a.y, b.y)
            assert torch.equal(a.x["visual"], b.x["visual"])
            torch.testing.assert_close(b.x["audio"], a.x["audio"], rtol=1e-5, atol=1e-5)


def test_cached_training_batches_are_random_per_epoch_and_reproducible(tmp_path):
    root = make_cremad(tmp_path / "CREMA-D")
    ds = build_dataset(cremad_cfg(root, f"data.cache={tmp_path / 'cache'}", "data.frames=2").data)
    one, again, other = _batches(ds.train, 3), _batches(ds.train, 3), _batches(ds.train, 4)
    for a, b in zip(one, again, strict=True):
        assert a.ids == b.ids and torch.equal(a.x["visual"], b.x["visual"]) and torch.equal(a.x["audio"], b.x["audio"])
    assert not torch.equal(torch.cat([b.x["visual"] for b in one]), torch.cat([b.x["visual"] for b in other]))
    # clips longer than the window (8 STFT frames): the window's start is drawn per epoch too
    short = build_dataset(cremad_cfg(root, f"data.cache={tmp_path / 'cache'}", "data.audio_frames=8").data)
    def by_clip(seed):
        return {i: x for b in _batches(short.train, seed) for i, x in zip(b.ids, b.x["audio"])}

    a, b, again = by_clip(3), by_clip(4), by_clip(3)
    assert all(torch.equal(a[i], again[i]) for i in a)
    assert sum(not torch.equal(a[i], b[i]) for i in a) > len(a) // 2
    plain = build_dataset(cremad_cfg(root, "data.frames=2").data)
    assert one[0].x["visual"].shape == _batches(plain.train, 3)[0].x["visual"].shape
    # two worker processes read the memory-mapped files themselves: the same batches
    two = build_dataset(cremad_cfg(root, f"data.cache={tmp_path / 'cache'}", "data.frames=2", "data.num_workers=2").data)
    for a, b in zip(one, _batches(two.train, 3), strict=True):
        assert torch.equal(a.x["visual"], b.x["visual"]) and torch.equal(a.x["audio"], b.x["audio"])


def test_a_changed_setting_or_corpus_is_never_read_from_the_cache(tmp_path, capsys):
    root = make_cremad(tmp_path / "CREMA-D")
    cache = tmp_path / "cache"
    build_dataset(cremad_cfg(root, f"data.cache={cache}").data)
    capsys.readouterr()
    ds = build_dataset(cremad_cfg(root, f"data.cache={cache}", "data.sample_rate=16000").data)
    err = capsys.readouterr().err
    assert ds.train.set.cache is None and "data.sample_rate: 22050 there, 16000 here" in err and "decoding from the files" in err
    first = sorted((root / "Image-01-FPS").iterdir())[0]
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(first / "00009.jpg")  # one more frame in one clip
    ds = build_dataset(cremad_cfg(root, f"data.cache={cache}").data)
    assert ds.train.set.cache is None and "the corpus's files" in capsys.readouterr().err


def test_an_interrupted_build_resumes_to_the_same_arrays(tmp_path):
    root = make_cremad(tmp_path / "CREMA-D", n_train=70, n_test=5)
    clips, _ = checked_clips("cremad", root)
    spec = cremad_cfg(root).data.settings
    av_cache.build("cremad", clips, spec, tmp_path / "whole")

    def stop(done, total):
        if done == 66:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        av_cache.build("cremad", clips, spec, tmp_path / "cut", stop)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.part").is_dir()
    assert np.load(tmp_path / "cut.part" / "done.npy")[:64].all()  # the first 64 clips are recorded as done
    av_cache.build("cremad", clips, spec, tmp_path / "cut")
    assert not (tmp_path / "cut.part").exists()
    for name in ("audio.npy", "frames.npy"):
        assert np.array_equal(np.load(tmp_path / "whole" / name), np.load(tmp_path / "cut" / name)), name
    assert json.loads((tmp_path / "whole/index.json").read_text()) == json.loads((tmp_path / "cut/index.json").read_text())


def test_the_cli_caches_a_corpus_and_trains_from_it(tmp_path, capsys):
    root = make_cremad(tmp_path / "CREMA-D")
    cache = tmp_path / "cache"
    assert cli.main(["data", "cache", "cremad", f"data={root}", f"out={cache}", "data.image_size=48"]) == 0
    assert "cached 17 clips" in capsys.readouterr().out
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--epochs", "1", "--out", str(run),
                     f"data.cache={cache}", "data.audio_frames=64", "data.image_size=48", "data.batch_size=4",
                     "model.width=4", "data.valid_fraction=0.25", "train.probe=false"]) == 0
    assert "decoding from the files" not in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert cli.main(["train", "--dataset", "cremad", "--data", str(root), "--out", str(tmp_path / "r2"),
                     f"data.cache={tmp_path / 'junk'}"]) == 2
    err = capsys.readouterr().err
    assert "is not a cache (no index.json)" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine" and not (tmp_path / "r2").exists()
    assert cli.main(["data", "cache", "cremad", f"data={root}", f"out={tmp_path / 'junk'}"]) == 2
    err = capsys.readouterr().err
    assert "out names a folder that is not a cache" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "junk").iterdir()) == ["notes.txt"] and not (tmp_path / "junk.part").exists()
    assert cli.main(["data", "cache", "cremad", f"out={cache}"]) == 2
    assert "needs data=DIR" in capsys.readouterr().err


def test_persistent_workers_give_each_epoch_the_batches_of_fresh_ones(tmp_path):
    """On CUDA a split keeps its workers across epochs (DecodedSplit.persistent); forced on here, three
    epochs, one of them abandoned half-way, give the batches per-epoch workers give."""
    root = make_cremad(tmp_path / "CREMA-D")
    fresh = build_dataset(cremad_cfg(root, "data.num_workers=2").data).train
    kept = build_dataset(cremad_cfg(root, "data.num_workers=2").data).train
    kept.persistent, fresh.persistent = True, False
    for epoch in range(3):
        want = _batches(fresh, epoch)
        got = kept.batches(4, shuffle=True, generator=torch.Generator().manual_seed(epoch))
        for k, (a, b) in enumerate(zip(want, got)):
            assert a.ids == b.ids and torch.equal(a.x["visual"], b.x["visual"]) and torch.equal(a.x["audio"], b.x["audio"])
            if epoch == 1 and k == 0:
                break  # an epoch left unfinished: the next one still starts from its own first batch
    assert kept._loader is not None and kept._loader.persistent_workers


def test_a_dry_run_does_not_build_the_cache(tmp_path, capsys):
    root = make_cremad(tmp_path / "CREMA-D")
    cache = tmp_path / "cache"
    assert cli.main(["train", "--dataset", "cremad", "--data", str(root), "--out", str(tmp_path / "run"), "--dry-run",
                     f"data.cache={cache}", "data.audio_frames=64", "data.image_size=48", "model.width=4"]) == 0
    assert f"would build the cache data.cache={cache}" in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "cache.part").exists() and not (tmp_path / "run").exists()
    # a sweep's dry run loads the same data and builds nothing either (the loader only reads; its
    # deferred work is done by whoever may write)
    spec = tmp_path / "s.yaml"
    spec.write_text("trials: 1\nspace: {train.lr: {low: 0.001, high: 0.01}}\n")
    assert cli.main(["sweep", str(spec), "--dataset", "cremad", "--data", str(root), "--dry-run", "--out-dir",
                     str(tmp_path / "sw"), f"data.cache={cache}", "data.audio_frames=64", "data.image_size=48"]) == 0
    assert f"the sweep would build the cache data.cache={cache}" in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "cache.part").exists() and not (tmp_path / "sw").exists()
    # and a run builds it, before its first epoch, after every check
    assert cli.main(["train", "--quiet", "--dataset", "cremad", "--data", str(root), "--out", str(tmp_path / "run"),
                     f"data.cache={cache}", "data.audio_frames=64", "data.image_size=48", "model.width=4",
                     "train.epochs=1", "data.batch_size=4", "train.probe=false"]) == 0
    assert (cache / "index.json").is_file()


def _ks_layout(root: Path) -> Path:
    """The authors' Kinetics-Sounds class-folder layout (no CSV), 3 frames a clip, 16 kHz audio."""
    from scipy.io import wavfile

    for i in range(10):
        split, label = ("test" if i >= 8 else "train"), ["playing_drums", "singing"][i % 2]
        (root / "audio" / split / label).mkdir(parents=True, exist_ok=True)
        t = np.arange(8000) / 16000
        wavfile.write(root / "audio" / split / label / f"c{i}.wav", 16000,
                      (0.3 * np.sin(2 * np.pi * (300 + 37 * i) * t) * 32767).astype(np.int16))
        frames = root / "visual" / f"{split}_img" / "Image-01-FPS" / label / f"c{i}"
        frames.mkdir(parents=True)
        for k in range(5):
            img = np.full((36, 44, 3), 40 * k + i, np.uint8)
            img[:10, :12] = 255 - 30 * k
            Image.fromarray(img).save(frames / f"{k:05d}.jpg")
    return root


SHARED_AVDIGITS = ROOT.parent / "shared" / "data" / "avdigits"


@pytest.mark.parametrize("dataset", ["ks", "avdigits"])
def test_every_layout_caches_to_the_decoded_batches(tmp_path, dataset):
    """Kinetics-Sounds' class folders (3 frames from 5 per clip) and the real avdigits corpus."""
    from mmsent.config import load_config

    if dataset == "avdigits":
        if not SHARED_AVDIGITS.is_dir():
            pytest.skip("needs ../shared/data/avdigits")
        over = [f"data.path={SHARED_AVDIGITS}"]
    else:
        over = [f"data.path={_ks_layout(tmp_path / 'ks')}", "data.valid_fraction=0.25", "data.audio_frames=64",
                "data.image_size=32"]
    plain = build_dataset(load_config(ROOT / f"configs/{dataset}.yaml", over).data)
    cached = build_dataset(load_config(ROOT / f"configs/{dataset}.yaml", [*over, f"data.cache={tmp_path / 'c'}"]).data)
    assert cached.test.set.cache is not None
    for a, b in zip(_batches(plain.test)[:3], _batches(cached.test)[:3], strict=True):
        assert a.ids == b.ids and torch.equal(a.x["visual"], b.x["visual"])
        torch.testing.assert_close(b.x["audio"], a.x["audio"], rtol=1e-5, atol=1e-5)


def test_a_damaged_cache_or_a_file_for_a_cache_is_one_line(tmp_path):
    """data.cache naming a file; a cut index.json; a cache missing audio.npy; an index whose
    offsets do not cut its arrays: each one DataError naming the file (not a NotADirectoryError,
    JSONDecodeError or FileNotFoundError)."""
    from mmsent.data import DataError

    root = make_cremad(tmp_path / "c", n_train=4, n_test=2)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(DataError, match="names a file, not a cache folder"):
        build_dataset(cremad_cfg(root, f"data.cache={afile}").data)
    assert afile.read_text() == "mine"
    cache = tmp_path / "cache"
    build_dataset(cremad_cfg(root, f"data.cache={cache}").data)
    index = (cache / "index.json").read_text()
    (cache / "index.json").write_text(index[: len(index) // 2])
    with pytest.raises(DataError, match="index.json: damaged cache index"):
        build_dataset(cremad_cfg(root, f"data.cache={cache}").data)
    (cache / "index.json").write_text(index.replace('"audio": [0', '"audio": [7'))
    with pytest.raises(DataError, match="not the index of an mmsent cache"):
        build_dataset(cremad_cfg(root, f"data.cache={cache}").data)
    (cache / "index.json").write_text(index)
    (cache / "audio.npy").unlink()
    with pytest.raises(DataError, match="audio.npy: missing or damaged"):
        build_dataset(cremad_cfg(root, f"data.cache={cache}").data)


def test_a_cache_that_cannot_fit_its_disk_is_one_line_and_leaves_no_part_folder(tmp_path, capsys, monkeypatch):
    """`data cache` onto a full disk died of a Bus error (a memory-mapped page written with no block
    behind it), printed nothing and left `cache.part` filling the disk. Now the size is known before
    a byte is written and checked against the free space; the blocks are reserved when the maps are
    made (posix_fallocate), so a disk that fills meanwhile is ENOSPC there; either way one line,
    exit 2, and no `.part` folder."""
    import errno
    import os
    import resource
    import subprocess

    root = make_cremad(tmp_path / "CREMA-D")
    cache = tmp_path / "cache"
    args = ["data", "cache", "cremad", f"data={root}", f"out={cache}", "data.image_size=48"]
    # (1) not enough free space: said before anything is made
    monkeypatch.setattr(av_cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the cache needs 0.00 GiB and its filesystem has 0.00 GiB free" in err, err
    assert not cache.exists() and not (tmp_path / "cache.part").exists()
    monkeypatch.undo()
    # (2) the space goes while the maps are made: the reservation fails, the fresh .part is removed
    real = os.posix_fallocate
    monkeypatch.setattr(av_cache.os, "posix_fallocate",
                        lambda fd, off, n: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cache.part: cannot write (No space left on device" in err, err
    assert not (tmp_path / "cache.part").exists() and not cache.exists()
    monkeypatch.setattr(av_cache.os, "posix_fallocate", real)
    # (3) a real limit in a real process: a file-size limit below the frames array (EFBIG at the
    # reservation or the map), one line and no traceback, nothing left
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=tmp_path, capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cannot write" in p.stderr and not (tmp_path / "cache.part").exists()
    assert cli.main(args) == 0 and cache.is_dir()  # with the space back, the same command builds it
