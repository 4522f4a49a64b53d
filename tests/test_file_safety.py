"""No command deletes or writes anything outside its output folder, nor into a folder that is not
new, empty or its own kind, nor through a link it did not make; a corpus scan stays inside its
corpus. Each of the three user-file failures of the reliability probe (issue 36) fails on the code
before this change: a clip id in splits.csv that is a path made prepare delete ``<path>.part``; a
``.lock`` that is a symlink was written through; prepare wrote into a user's folder."""
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402


def make_raw(root: Path, ids, labels=("zero", "one")) -> Path:
    """A raw avdigits-layout corpus: splits.csv, audio/<clip>.wav, frames/<clip>/*.jpg."""
    for i, clip in enumerate(ids):
        (root / "audio").mkdir(parents=True, exist_ok=True)
        wavfile.write(root / "audio" / f"{clip}.wav", 8000, (np.sin(np.arange(2000) / (3 + i)) * 9000).astype(np.int16))
        (root / "frames" / clip).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i % 255, np.uint8)).save(root / "frames" / clip / "00000.jpg")
    rows = [f"{c},{labels[i % len(labels)]},{'train' if i % 3 else 'test'}" for i, c in enumerate(ids)]
    (root / "splits.csv").write_text("clip,label,split\n" + "\n".join(rows) + "\n")
    return root


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_a_clip_id_that_is_a_path_is_refused_and_nothing_outside_out_is_touched(tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "x.part").mkdir(parents=True)
    (victim / "x.part" / "thesis.tex").write_text("years of work")
    before = snapshot(victim)
    for bad in (f"../../../{victim.relative_to(tmp_path)}/x", str(victim / "x"), "..", "a/b"):
        raw = make_raw(tmp_path / f"raw{abs(hash(bad))}", ["c0", "c1", "c2"])
        rows = (raw / "splits.csv").read_text().replace("c1,", f"{bad},")
        (raw / "splits.csv").write_text(rows)
        out = tmp_path / f"out{abs(hash(bad))}" / "deep" / "er"
        rc = cli.main(["data", "prepare", "avdigits", "--src", str(raw), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "not a plain file name" in err and repr(bad) in err, err
        assert not out.exists()
    assert snapshot(victim) == before


def test_prepare_refuses_a_users_folder_and_resumes_its_own(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw", ["c0", "c1", "c2"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "classes.txt").write_text("my own class list\n")
    before = snapshot(mine)
    assert cli.main(["data", "prepare", "avdigits", "--src", str(raw), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holding other files (classes.txt)" in err
    assert snapshot(mine) == before
    out = tmp_path / "out"
    assert cli.main(["data", "prepare", "avdigits", "--src", str(raw), "--out", str(out)]) == 0
    assert (out / ".mmsent-prepared").is_file() and (out / "classes.txt").read_text() == "one\nzero\n"
    assert cli.main(["data", "prepare", "avdigits", "--src", str(raw), "--out", str(out)]) == 0  # its own: again


def test_a_lock_file_that_is_a_symlink_is_never_written_through(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--out", str(run), "data.n_train=32", "data.n_val=16", "data.n_test=16",
                     "train.epochs=1", "train.probe=false", "model.dim=8", "model.hidden=8", "model.seq_len=2"]) == 0
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch\n")
    (run / ".lock").unlink()
    os.symlink(precious, run / ".lock")
    rc = cli.main(["train", "--quiet", "--out", str(run), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "symbolic link" in err and err.count("\n") == 1
    assert precious.read_text() == "do not touch\n"


def test_a_corpus_scan_does_not_follow_links_out_of_its_root(tmp_path):
    from mmsent.data.av_corpus import walk

    raw = make_raw(tmp_path / "raw", ["c0", "c1"])
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.wav").write_bytes(b"x")
    os.symlink(outside, raw / "escape")
    os.symlink(raw / "frames", raw / "inside")  # a link that stays inside is followed
    found = walk(raw)
    assert not any("secret" in str(p) for p in found)
    assert raw / "inside" / "c0" / "00000.jpg" in found or raw / "frames" / "c0" / "00000.jpg" in found
