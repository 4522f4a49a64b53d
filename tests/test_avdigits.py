"""The audio-visual path on REAL media: ../shared/data/avdigits (spoken digits, FSDD 8 kHz WAVs, with
handwritten digits, MNIST JPGs). Skipped where ../shared is absent."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.config import load_config  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.data.av_decode import fit_length, log_spectrogram, read_wav  # noqa: E402

AVDIGITS = ROOT.parent / "shared/data/avdigits"
pytestmark = pytest.mark.skipif(not (AVDIGITS / "splits.csv").is_file(), reason="../shared/data/avdigits not present")


def test_real_clips_decode_to_the_configured_spectrogram_and_frames():
    cfg = load_config(ROOT / "configs/avdigits.yaml", [("data.path", str(AVDIGITS))])
    ds = build_dataset(cfg.data)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2430, 270, 300) and ds.num_classes == 10
    b = ds.test.batch(torch.arange(4))
    s = cfg.data.settings
    assert b.x["audio"].shape == (4, s.n_fft // 2 + 1, s.audio_frames) and torch.isfinite(b.x["audio"]).all()
    assert b.x["visual"].shape == (4, 1, 3, 32, 32) and torch.isfinite(b.x["visual"]).all()
    clip = ds.test.clips[0]
    wave = fit_length(read_wav(clip.wav, s.sample_rate), s.samples, None)  # 8 kHz: no resampling
    torch.testing.assert_close(b.x["audio"][0], log_spectrogram(torch.from_numpy(wave), n_fft=s.n_fft, hop=s.hop))
    assert b.x["audio"][0].std() > 1  # a real recording, not silence
    assert [ds.test.y[i].item() for i in range(4)] == [int(clip.id[0]) for clip in ds.test.clips[:4]]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """60 real clips (6 per class) behind symlinks to the real files, a small split."""
    root = tmp_path_factory.mktemp("avdigits")
    (root / "audio").mkdir()
    (root / "frames").mkdir()
    (root / "classes.txt").symlink_to(AVDIGITS / "classes.txt")
    with open(AVDIGITS / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = []
    for label in (AVDIGITS / "classes.txt").read_text().split():
        picked += [r for r in rows if r["label"] == label and r["split"] == "train"][:5]
        picked += [r for r in rows if r["label"] == label and r["split"] == "test"][:1]
    with open(root / "splits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip", "label", "split"])
        w.writeheader()
        w.writerows(picked)
    for r in picked:  # linked files (a corpus scan does not follow a linked FOLDER out of the corpus)
        (root / "audio" / f"{r['clip']}.wav").symlink_to(AVDIGITS / "audio" / f"{r['clip']}.wav")
        (root / "frames" / r["clip"]).mkdir()
        for jpg in (AVDIGITS / "frames" / r["clip"]).iterdir():
            (root / "frames" / r["clip"] / jpg.name).symlink_to(jpg)
    return root


@pytest.mark.parametrize("fusion,strategy", [("concat", "dgl"), ("mmtm", "dgl_mh")])
def test_one_epoch_on_real_media_through_the_cli(tmp_path, small_corpus, fusion, strategy):
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "avdigits", "--data", str(small_corpus), "--fusion", fusion,
                     "--strategy", strategy, "--epochs", "1", "--out", str(out), "data.batch_size=16", "model.width=8",
                     "data.valid_fraction=0.2"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]) == {"multi", "audio", "visual"} and set(res["probe"]) == {"audio", "visual"}
    assert all(np.isfinite(v["loss"]) for v in res["test"].values())


def test_a_users_corpus_folder_needs_no_dataset_name(tmp_path, small_corpus, capsys):
    """`--data DIR` alone: a folder with a split file is read as the generic audio-visual dataset
    with the authors' recipe (configs/av.yaml), here shrunk to the 8 kHz clips."""
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--data", str(small_corpus), "--strategy", "dgl", "--epochs", "1",
                     "--out", str(out), "data.sample_rate=8000", "data.audio_frames=64", "data.n_fft=256",
                     "data.hop=64", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
                     "data.valid_fraction=0.2", "model.width=8"]) == 0
    assert "read as dataset 'av'" in capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    assert cfg["data"]["dataset"] == "av" and cfg["train"]["optimizer"] == "sgd" and cfg["strategy"]["presets"]["dgl"] == {"alpha": 4.0}
    assert set(res["test"]) == {"multi", "audio", "visual"} and res["task"] == "classification"
