"""CMU SDK .csd files written in the official layout with h5py: reading, word alignment,
segmentation, the prepare command, and every bad-input case with a clear error or counted warning."""
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsent.data import DataError, load_mmsa
from mmsent.data.csd import CSD, build_mmsa, write_csd
from mmsent.data.folds import read_folds, standard_folds, video_folds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402

VIDEOS = ["vidA", "vidB", "vidC"]


def make_corpus(d: Path, *, covarep_nan=False, label=None, drop=None, vectors=False, videos=VIDEOS):
    """Per video: two labelled segments [0, 3) and [3, 6); words each 1 s long with one pause 'sp';
    COVAREP rows every 0.5 s whose value is the row's start time (so averages are predictable);
    FACET rows every 1 s with value 10 * start."""
    d.mkdir(parents=True, exist_ok=True)
    words, audio, vision, labels = {}, {}, {}, {}
    for k, v in enumerate(videos):
        starts = np.arange(6.0)
        words[v] = (np.stack([starts, starts + 1], 1), np.array([[b"good"], [b"sp"], [b"film"], [b"bad"], [b"plot"], [b"ok"]]))
        a_st = np.arange(0, 6, 0.5)
        a = np.stack([a_st, a_st * 2], 1)
        if covarep_nan and k == 0:
            a[0, 0] = np.nan
            a[1, 1] = -np.inf
        audio[v] = (np.stack([a_st, a_st + 0.5], 1), a.astype(np.float32))
        vision[v] = (np.stack([starts, starts + 1], 1), (10 * starts[:, None]).astype(np.float32))
        y = np.array([[1.5 + 0.5 * (k % 3)], [-0.5]]) if label is None or k else np.array([[label], [0.0]])
        labels[v] = (np.array([[0.0, 3.0], [3.0, 6.0]]), y)
    files = {"CMU_MOSI_TimestampedWords.csd": words, "CMU_MOSI_COVAREP.csd": audio,
             "CMU_MOSI_Visual_Facet_41.csd": vision, "CMU_MOSI_Opinion_Labels.csd": labels}
    if vectors:  # word vectors live on the word intervals: value = 100 + word start
        files["CMU_MOSI_TimestampedWordVectors.csd"] = {
            v: (words[v][0], np.repeat(100 + words[v][0][:, :1], 3, 1).astype(np.float32)) for v in VIDEOS}
    for name, data in files.items():
        if drop and drop in name:
            continue
        write_csd(d / name, name[:-4], data, {"root name": name[:-4], "dimension names": ["x"]})
    return d


def test_reader_is_lazy_and_reads_metadata(tmp_path):
    d = make_corpus(tmp_path / "csd")
    c = CSD(d / "CMU_MOSI_COVAREP.csd")
    assert c.root == "CMU_MOSI_COVAREP" and sorted(c.videos()) == VIDEOS
    assert c.metadata["dimension names"] == ["x"]
    iv, feat = c["vidB"]
    assert iv.shape == (12, 2) and feat.shape == (12, 2)
    c.close()


def test_alignment_averages_within_words_and_segments(tmp_path):
    d = make_corpus(tmp_path / "csd")
    data = build_mmsa(d, {"train": ["vidA", "vidB"], "valid": ["vidC"], "test": []}, seq_len=4)
    tr = data["train"]
    assert tr["id"] == ["vidA_0", "vidA_1", "vidB_0", "vidB_1"]
    assert tr["raw_text"][:2] == ["good film", "bad plot ok"]  # the pause 'sp' is dropped with its rows
    assert tr["regression_labels"].tolist() == [1.5, -0.5, 2.0, -0.5]
    # word "good" spans [0, 1): COVAREP rows starting at 0 and 0.5 -> mean start 0.25
    assert tr["audio"][0, 0].tolist() == pytest.approx([0.25, 0.5])
    assert tr["audio"][0, 1].tolist() == pytest.approx([2.25, 4.5])  # "film" [2, 3)
    assert tr["vision"][1, :3, 0].tolist() == pytest.approx([30, 40, 50])  # "bad", "plot", "ok"
    assert tr["audio_lengths"].tolist() == [2, 3, 2, 3] and (tr["audio"][0, 2:] == 0).all()  # padded to 4
    assert "text" not in tr  # no word-vector file: the transcript is in raw_text only
    with_vectors = build_mmsa(make_corpus(tmp_path / "v", vectors=True), {"train": ["vidA"], "valid": [], "test": []},
                              seq_len=4)["train"]
    assert with_vectors["text"][0, :2, 0].tolist() == [100.0, 102.0]  # "good" at 0 s, "film" at 2 s


def test_prepare_command_produces_a_trainable_pickle(tmp_path):
    d = make_corpus(tmp_path / "csd")
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"train": ["vidA", "vidB"], "valid": ["vidC"], "test": ["vidC"]}))
    out = tmp_path / "mosi.pkl"
    assert cli.main(["data", "prepare", "mosi", f"csd_dir={d}", f"out={out}", f"folds={folds}",
                     "seq_len=4"]) == 0
    ds = load_mmsa(out)
    assert ds.modalities == ["audio", "vision"]
    assert ds.train.mask["audio"].sum(1).tolist() == [2, 3, 2, 3]
    assert torch.isfinite(ds.train.x["vision"]).all()
    rc = cli.main(["train", "--quiet", "--dataset", "mosi", "--data", str(out), "--epochs", "1", "--strategy", "dgl",
                   "--out", str(tmp_path / "run"), "data.batch_size=2", "model.dim=4", "model.hidden=8"])
    assert rc == 0


def test_nan_and_inf_in_covarep_are_counted_by_the_loader(tmp_path):
    d = make_corpus(tmp_path / "csd", covarep_nan=True)
    data = build_mmsa(d, {"train": VIDEOS, "valid": ["vidA"], "test": ["vidB"]}, seq_len=4)
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(data))
    with pytest.warns(UserWarning, match=r"train\['audio'\] has \d+ non-finite"):
        load_mmsa(p)


def test_bad_inputs(tmp_path):
    good = make_corpus(tmp_path / "good")
    with pytest.raises(DataError, match="outside \\[-3, 3\\]"):
        build_mmsa(make_corpus(tmp_path / "lab", label=3.5), {"train": VIDEOS, "valid": [], "test": []})
    with pytest.raises(DataError, match="no .csd file for audio"):
        build_mmsa(make_corpus(tmp_path / "miss", drop="COVAREP"), {"train": VIDEOS, "valid": [], "test": []})
    with pytest.raises(DataError, match="video 'vidZ' of fold 'test' is absent"):
        build_mmsa(good, {"train": VIDEOS, "valid": [], "test": ["vidZ"]})
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in good.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "CMU_MOSI_COVAREP.csd").write_bytes((good / "CMU_MOSI_COVAREP.csd").read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable HDF5"):
        build_mmsa(bad, {"train": VIDEOS, "valid": [], "test": []})
    (bad / "CMU_MOSI_COVAREP.csd").write_text("just text")
    with pytest.raises(DataError, match="not a readable HDF5"):
        CSD(bad / "CMU_MOSI_COVAREP.csd")


def test_empty_word_intervals_are_counted(tmp_path):
    d = make_corpus(tmp_path / "csd")
    iv, tok = CSD(d / "CMU_MOSI_TimestampedWords.csd")["vidA"]
    words = {v: CSD(d / "CMU_MOSI_TimestampedWords.csd")[v] for v in VIDEOS}
    words["vidA"] = (iv[3:], tok[3:])  # segment 0 of vidA loses all its words
    write_csd(d / "CMU_MOSI_TimestampedWords.csd", "CMU_MOSI_TimestampedWords", words)
    with pytest.warns(UserWarning, match="1 labelled segments hold no word"):
        data = build_mmsa(d, {"train": VIDEOS, "valid": [], "test": []}, seq_len=4)
    assert data["train"]["audio_lengths"][0] == 0 and data["train"]["raw_text"][0] == ""


def test_download_without_the_sdk_says_how_to_get_the_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mmsdk", None)  # import fails even where an SDK is installed
    assert cli.main(["data", "download", "mosi", f"out={tmp_path / 'd'}"]) == 2
    assert "data prepare mosi csd_dir=" in capsys.readouterr().err


def _fake_sdk(monkeypatch, urls):
    """An ``mmsdk`` whose MOSI recipe points at local files (urllib reads file:// like http://)."""
    import types

    sdk, datasdk = types.ModuleType("mmsdk"), types.ModuleType("mmsdk.mmdatasdk")
    datasdk.cmu_mosi = types.SimpleNamespace(raw={"words": urls[0]}, highlevel={f"f{i}": u for i, u in enumerate(urls[1:-1])},
                                             labels={"Opinion Segment Labels": urls[-1]})
    sdk.mmdatasdk = datasdk
    monkeypatch.setitem(sys.modules, "mmsdk", sdk)
    monkeypatch.setitem(sys.modules, "mmsdk.mmdatasdk", datasdk)


def test_download_uses_the_sdk_recipe_never_prompts_and_resumes(tmp_path, monkeypatch, capsys):
    src = make_corpus(tmp_path / "server")
    names = ["CMU_MOSI_TimestampedWords.csd", "CMU_MOSI_COVAREP.csd", "CMU_MOSI_Visual_Facet_41.csd",
             "CMU_MOSI_Opinion_Labels.csd"]
    _fake_sdk(monkeypatch, [(src / n).as_uri() for n in names])
    monkeypatch.setattr("sys.stdin", None)  # any prompt would fail loudly
    out = tmp_path / "got"
    assert cli.main(["data", "download", "mosi", f"out={out}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert (out / names[1]).read_bytes() == (src / names[1]).read_bytes()
    (src / names[0]).unlink()  # files already there are kept, so the gone source is not fetched again
    assert cli.main(["data", "download", "mosi", f"out={out}"]) == 0
    assert cli.main(["data", "prepare", "mosi", f"csd_dir={out}", f"out={tmp_path / 'm.pkl'}",
                     "folds=video", "seq_len=3"]) == 0


def test_a_failed_download_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    src = make_corpus(tmp_path / "server")
    _fake_sdk(monkeypatch, [(src / "CMU_MOSI_TimestampedWords.csd").as_uri(), (tmp_path / "gone/COVAREP.csd").as_uri(),
                            (src / "CMU_MOSI_Visual_Facet_41.csd").as_uri(), (src / "CMU_MOSI_Opinion_Labels.csd").as_uri()])
    out = tmp_path / "got"
    assert cli.main(["data", "download", "mosi", f"out={out}"]) == 2
    assert "COVAREP.csd: download failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["CMU_MOSI_TimestampedWords.csd"]


@pytest.mark.parametrize("classes,want", [(2, [1, 0, 1, 0]), (7, [5, 3, 5, 3])])
def test_binary_and_seven_class_settings_on_prepared_data(tmp_path, classes, want):
    d = make_corpus(tmp_path / "csd")
    out = tmp_path / "mosei.pkl"
    assert cli.main(["data", "prepare", "mosei", f"csd_dir={d}", f"out={out}", "seq_len=4",
                     f"folds={_folds(tmp_path)}"]) == 0
    from mmsent.config import load_config
    from mmsent.data import build_dataset

    cfg = load_config(Path(cli.ROOT) / "configs/mosei.yaml", [("data.path", str(out)), ("data.task", "classification"),
                                                              ("data.num_classes", classes)])
    ds = build_dataset(cfg.data)
    assert ds.task == "classification" and ds.train.y.tolist() == want  # labels 1.5, -0.5, 2.0, -0.5
    rc = cli.main(["train", "--quiet", "--config", str(Path(cli.ROOT) / "configs/mosei.yaml"), "--data", str(out),
                   "--epochs", "1", "--out", str(tmp_path / f"r{classes}"), "data.task=classification",
                   f"data.num_classes={classes}", "data.batch_size=2", "model.dim=4", "model.hidden=8"])
    assert rc == 0
    res = json.loads((tmp_path / f"r{classes}/results.json").read_text())
    assert set(res["test"]["multi"]) == {"loss", "acc", "f1"}


def _folds(tmp_path):
    p = tmp_path / "folds.json"
    p.write_text(json.dumps({"train": ["vidA", "vidB"], "valid": ["vidC"], "test": ["vidC"]}))
    return p


def test_train_straight_from_a_csd_folder(tmp_path):
    """One command: a folder of .csd files in the official layout becomes a training run."""
    d = make_corpus(tmp_path / "csd", vectors=True)
    rc = cli.main(["train", "--quiet", "--dataset", "mosi", "--data", str(d), "--epochs", "1", "--strategy", "dgl",
                   "--out", str(tmp_path / "run"), f"data.folds={_folds(tmp_path)}", "data.seq_len=4",
                   "data.batch_size=2", "model.dim=4", "model.hidden=8"])
    assert rc == 0
    res = json.loads((tmp_path / "run/results.json").read_text())
    assert set(res["test"]) == {"multi", "text", "audio", "vision"}


SHARED_MOSI = Path(__file__).resolve().parents[2] / "shared/data/mosi/mosi_utterance.pkl"


@pytest.mark.parametrize("dataset,sizes", [("mosi", [52, 10, 31]), ("mosei", [2249, 300, 678])])
def test_shipped_folds_are_disjoint_video_splits_of_the_sdk_sizes(dataset, sizes):
    f = standard_folds(dataset)
    assert [len(f[s]) for s in ("train", "valid", "test")] == sizes
    assert len(set(f["train"]) | set(f["valid"]) | set(f["test"])) == sum(sizes)  # no id twice


@pytest.mark.skipif(not SHARED_MOSI.is_file(), reason="needs ../shared/data/mosi")
def test_shipped_mosi_folds_name_exactly_the_videos_of_real_mosi():
    """An independent check of the shipped ids: the real corpus holds the same 93 videos."""
    data = pickle.loads(SHARED_MOSI.read_bytes())
    real = {i.rsplit("_", 1)[0] for split in data.values() for i in split["id"]}
    f = standard_folds("mosi")
    assert real == set(f["train"]) | set(f["valid"]) | set(f["test"])


def test_prepare_defaults_to_the_standard_folds(tmp_path):
    f = standard_folds("mosi")
    d = make_corpus(tmp_path / "csd", videos=[*f["train"], *f["valid"], *f["test"], "extraVid"])
    out = tmp_path / "mosi.pkl"
    with pytest.warns(UserWarning, match="1 labelled videos are in no standard fold"):
        assert cli.main(["data", "prepare", "mosi", f"csd_dir={d}", f"out={out}", "seq_len=2"]) == 0
    data = pickle.loads(out.read_bytes())
    for split in ("train", "valid", "test"):  # two labelled segments per video, in fold order
        assert data[split]["id"][::2] == [f"{v}_0" for v in f[split]]


def test_standard_folds_on_a_partial_corpus_name_the_missing_video(tmp_path, capsys):
    d = make_corpus(tmp_path / "csd")
    rc = cli.main(["data", "prepare", "mosi", f"csd_dir={d}", f"out={tmp_path / 'x.pkl'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "videos of the standard mosi folds are not in the labels" in err and "folds=video" in err
    assert not (tmp_path / "x.pkl").exists()
    assert cli.main(["data", "prepare", "mosi", f"csd_dir={d}", f"out={tmp_path / 'v.pkl'}",
                     "folds=video"]) == 0


def test_folds_json_is_validated(tmp_path):
    bad = tmp_path / "f.json"
    bad.write_text(json.dumps({"train": ["a"], "valid": "b", "test": []}))
    with pytest.raises(DataError, match="folds\\['valid'\\] must be a list"):
        read_folds(bad)


def test_video_folds_are_disjoint_and_cover_everything():
    f = video_folds([f"v{i:02d}" for i in range(20)])
    allv = f["train"] + f["valid"] + f["test"]
    assert sorted(allv) == [f"v{i:02d}" for i in range(20)] and len(set(allv)) == 20
    assert (len(f["valid"]), len(f["test"])) == (2, 4)
