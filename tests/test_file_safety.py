"""No command deletes or writes anything outside its output folder, nor into a folder that is not
new, empty or its own kind, nor through a link it did not make; a corpus scan stays inside its
corpus. Each of the three user-file failures of the reliability probe (issue 36) fails on the code
before this change: a clip id in splits.csv that is a path made prepare delete ``<path>.part``; a
``.lock`` that is a symlink was written through; prepare wrote into a user's folder."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
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
        rc = cli.main(["data", "prepare", "avdigits", f"src={raw}", f"out={out}"])
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
    assert cli.main(["data", "prepare", "avdigits", f"src={raw}", f"out={mine}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holding other files (classes.txt)" in err
    assert snapshot(mine) == before
    out = tmp_path / "out"
    assert cli.main(["data", "prepare", "avdigits", f"src={raw}", f"out={out}"]) == 0
    assert (out / ".mmsent-prepared").is_file() and (out / "classes.txt").read_text() == "one\nzero\n"
    assert cli.main(["data", "prepare", "avdigits", f"src={raw}", f"out={out}"]) == 0  # its own: again


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


def _train(run, *extra):
    return cli.main(["train", "--quiet", "--out", str(run), "data.n_train=32", "data.n_val=16", "data.n_test=16",
                     "train.epochs=1", "train.probe=false", "model.dim=8", "model.hidden=8", "model.seq_len=2", *extra])


def test_a_resumed_run_is_the_same_run(tmp_path, capsys):
    """--resume refuses any change but the epoch budget (strategy, seed, a setting, the data), in one
    line naming the key, and writes nothing; more epochs are fine and the results record the run's
    own config."""
    import json

    run = tmp_path / "run"
    assert _train(run) == 0
    capsys.readouterr()
    for change in (["--strategy", "dgl"], ["--seed", "5"], ["train.lr=0.5"], ["data.n_train=40"]):
        stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
        rc = cli.main(["train", "--quiet", "--out", str(run), "--resume", "--epochs", "2", *change])
        err = capsys.readouterr().err
        assert rc == 2 and "--resume continues the same run" in err and err.count("\n") == 1, (change, err)
        key = {"--strategy": "strategy.name", "--seed": "seed", "train.lr=0.5": "train.lr", "data.n_train=40": "data"}
        assert key[change[0]] in err, err
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamps
    assert cli.main(["train", "--quiet", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["strategy"]["name"] == "vanilla" and results["epochs_run"] == 2


def test_a_resume_on_other_data_with_the_same_settings_is_refused(tmp_path, capsys):
    """The same --data path holding other contents: the run's data fingerprint says so."""
    import pickle

    rng = np.random.default_rng(0)

    def views(shift):
        return {s: {"a": rng.normal(size=(n, 3)).astype(np.float32) + shift, "b": rng.normal(size=(n, 2)).astype(np.float32),
                    "classification_labels": np.arange(n) % 2} for s, n in (("train", 16), ("valid", 8), ("test", 8))}

    data = tmp_path / "views.pkl"
    data.write_bytes(pickle.dumps(views(0.0)))
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--data", str(data), "--out", str(run), "train.epochs=1", "train.probe=false",
                     "model.dim=4", "model.hidden=4", "model.seq_len=1", "data.batch_size=8"]) == 0
    data.write_bytes(pickle.dumps(views(1.0)))
    capsys.readouterr()
    rc = cli.main(["train", "--quiet", "--out", str(run), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "reads other data than the run started with" in err, err


def test_a_storage_password_is_never_printed(tmp_path, capsys):
    """A PostgreSQL URL with a password that cannot be reached: the one error line names the
    storage with the password masked, and no output holds the password."""
    from mmsent.sweep.storage import mask_secret, scrub

    assert mask_secret("postgresql://bob:s3cr3t@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_secret("postgresql://db/x?user=bob&password=s3cr3t") == "postgresql://db/x?user=bob&password=***"
    assert scrub("auth failed for s3cr3t", "postgresql://bob:s3cr3t@db/x") == "auth failed for ***"
    rc = cli.main(["sweep", "alpha", "--storage", "postgresql://bob:s3cr3t@127.0.0.1:1/nope", "--trials", "1",
                   "data.dataset=synthetic", "data.n_train=16", "data.n_val=8", "data.n_test=8"])
    out = capsys.readouterr()
    assert rc == 2 and "s3cr3t" not in out.out + out.err and "bob:***@" in out.out + out.err, out


def test_a_storage_that_never_answers_times_out(monkeypatch):
    """The connection to an RDB storage carries a connect timeout (a server that accepts and never
    answers held a sweep for minutes)."""
    import optuna

    from mmsent.sweep import storage

    seen = {}
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda url, engine_kwargs=None, **k: seen.update(engine_kwargs) or "ok")
    assert storage.make_storage("postgresql://u:p@h/db", 10) == "ok"
    assert seen == {"connect_args": {"connect_timeout": storage.CONNECT_TIMEOUT}} and storage.CONNECT_TIMEOUT <= 30


def _wav_with_rate(path: Path, rate: int, bits: int = 16) -> Path:
    """A WAV whose header claims ``rate`` (written by hand: scipy refuses to write such rates)."""
    import struct

    samples = (np.sin(np.arange(800) / 5) * 3000).astype(np.int16).tobytes()
    if bits == 24:
        ints = (np.sin(np.arange(800) / 5) * 2**22).astype(np.int32)
        samples = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in ints)
    block = bits // 8
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * block % 2**32, block, bits) + b"data" + struct.pack("<I", len(samples))
    path.write_bytes(header + samples)
    return path


def test_wav_headers_with_impossible_rates_are_one_line_and_24_bit_pcm_is_read(tmp_path):
    """0 Hz divided by zero in the first batch; 2**31 - 1 Hz asked for a 320 GiB filter; a valid
    24-bit PCM file was refused by the header check."""
    from mmsent.data.av_decode import check_wav, read_wav
    from mmsent.data.batch import DataError

    for rate in (0, 2**31 - 1):
        bad = _wav_with_rate(tmp_path / f"r{rate}.wav", rate)
        for read in (check_wav, lambda p: read_wav(p, 8000)):
            with pytest.raises(DataError, match=f"sample rate of {rate} Hz"):
                read(bad)
    good = _wav_with_rate(tmp_path / "24.wav", 16000, bits=24)
    check_wav(good)
    wave = read_wav(good, 8000)
    assert len(wave) == 400 and 0.4 < np.abs(wave).max() <= 1.0


def test_command_line_classes_are_one_line_before_any_work(tmp_path, capsys):
    """table --jobs -3; table --update with no table (it trained first); a misspelled key in a
    custom row (found only when its run started); sweep --trials 0 and -3; --out inside another run;
    predict on a finished run whose best.pt was removed (it said no epoch had finished)."""
    base = ["table", "--dataset", "synthetic", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "tables"), "data.n_train=16", "data.n_val=8", "data.n_test=8", "train.epochs=1"]
    cases = [
        ([*base, "--jobs", "-3"], "--jobs takes a number of parallel runs >= 1"),
        ([*base, "--update", "--methods", "DGL"], "--update needs the table to update"),
        ([*base, "--methods", "DGL", "Mine:strategy=dgl,strategy.alpah=2"], "row 'mine'"),
        (["sweep", "alpha", "--trials", "0", "data.dataset=synthetic"], "--trials takes"),
        (["sweep", "alpha", "--trials", "-3", "data.dataset=synthetic"], "--trials takes"),
    ]
    for argv, expect in cases:
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and expect in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / "runs").exists(), argv  # nothing trained
    run = tmp_path / "run"
    assert _train(run) == 0
    capsys.readouterr()
    assert _train(run / "inner") == 2 and "lies inside the run directory" in capsys.readouterr().err
    assert not (run / "inner").exists()
    (run / "best.pt").unlink()
    rc = cli.main(["predict", "--run", str(run), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "best.pt (the selected epoch's weights) is missing" in err


def test_report_under_an_ascii_only_interpreter(tmp_path):
    """`report` printed '±' and died with UnicodeEncodeError where the locale is ASCII."""
    import subprocess

    run = tmp_path / "run"
    assert _train(run) == 0
    env = dict(os.environ, PYTHONIOENCODING="ascii", LC_ALL="C", LANG="C")
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "report", str(run)], capture_output=True, text=True,
                       env=env, encoding="ascii", errors="replace")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_an_interrupt_inside_a_checkpoint_write_stays_an_interrupt(tmp_path, monkeypatch):
    """A second SIGTERM raises in the signal handler while torch.save is writing: torch wrapped it
    into a RuntimeError with a 42-line inline_container trace. It must come out as the interrupt
    (one line at the CLI), and leave no temporary file."""
    import signal

    import torch

    from mmsent import files
    from mmsent.interrupt import Interrupted

    class Signalled:  # the file under torch.save: the second write is where the signal lands
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, b):
            self.calls += 1
            if self.calls == 2:
                raise Interrupted(signal.SIGTERM, "interrupted twice by SIGTERM; stopped at once")
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    real = files._Recorder.__init__
    monkeypatch.setattr(files._Recorder, "__init__", lambda self, f: real(self, Signalled(f)))
    with pytest.raises(Interrupted):
        files.save_torch(tmp_path / "best.pt", {"w": torch.zeros(1000)})
    assert not any(tmp_path.iterdir())
