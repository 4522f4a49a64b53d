"""Hostile and broken inputs through the CLI, in a subprocess as a user runs it: exit code 2, one
line naming the culprit, no traceback, and nothing of the user's written, changed or deleted."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "data.batch_size=32", "model.dim=8",
         "model.hidden=16", "model.seq_len=2"]


def contents(run: Path) -> dict:
    """What a run folder holds, but the lock's note of who last held it (rewritten by every holder)."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}


def cli(cwd, *args):
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True)
    return p.returncode, p.stderr.strip()


class Hostile:
    """Unpickling this runs a shell command (the attack a --resume must never execute)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_runs_code_hidden_in_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    rc, err = cli(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(run), *SMALL)
    assert rc == 0, err
    marker = tmp_path / "pwned"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["state"]["extra"] = Hostile(marker)
    torch.save(ckpt, run / "last.pt")
    before = contents(run)
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(run), "--resume", "--epochs", "2")
    assert not marker.exists(), "the checkpoint's code ran"
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "last.pt: refused to load" in err
    assert contents(run) == before
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 1


def views(n=(8, 4, 5), seed=0, **edits):
    """A small any-key feature file: two modalities, 3 classes; ``edits`` replace split entries."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in zip(("train", "valid", "test"), n):
        out[split] = {"id": [f"{split}{i}" for i in range(k)], "a": rng.normal(size=(k, 3)).astype(np.float32),
                      "b": rng.normal(size=(k, 2, 4)).astype(np.float32), "classification_labels": np.arange(k) % 3}
    for where, value in edits.items():
        split, key = where.split("__")
        if value is None:
            del out[split][key]
        else:
            out[split][key] = value
    return out


def write_views(tmp_path, **edits):
    path = tmp_path / "views.pkl"
    path.write_bytes(pickle.dumps(views(**edits)))
    return ["--dataset", "features", "--data", str(path)]


# case -> (setup(tmp_path) -> extra argv, the text the one line must hold)
FRESH = {
    "empty train split": (lambda t: write_views(t, train__classification_labels=np.zeros(0, int)), "split 'train' is empty"),
    "empty valid split": (lambda t: write_views(t, valid__classification_labels=np.zeros(0, int)), "split 'valid' is empty"),
    "empty test split": (lambda t: write_views(t, test__classification_labels=np.zeros(0, int)), "split 'test' is empty"),
    "ids shorter than rows": (lambda t: write_views(t, test__id=["x"]), "test['id'] has 1 entries but the split has 5 rows"),
    "feature width differs": (lambda t: write_views(t, valid__a=np.zeros((4, 5), np.float32)),
                              "valid['a'] has 5 features per step but train['a'] has 3"),
    "modality only outside train": (lambda t: write_views(t, train__b=None), "split 'valid' has modality 'b' that split 'train' lacks"),
    "class id not an integer": (lambda t: write_views(t, test__classification_labels=np.array([0, 1.5, 2, 0, 1])),
                                "test['classification_labels'][1] = 1.5 is not a class id"),
    "labels not numbers": (lambda t: write_views(t, train__classification_labels=np.array(list("abcabcab"))),
                           "train['classification_labels'] must be numeric"),
    "unknown modality chosen": (lambda t: write_views(t) + ["data.modalities=[a, nope]"], "split 'train' has no key 'nope'"),
    "batch size 0": (lambda t: ["data.batch_size=0"], "'data.batch_size' must be >= 1, got 0"),
    "negative lr": (lambda t: ["train.lr=-1"], "'train.lr' must be a finite number > 0, got -1.0"),
    "nan lr": (lambda t: ["train.lr=.nan"], "'train.lr' must be a finite number > 0, got nan"),
    "negative seed": (lambda t: ["--seed", "-1"], "'seed' must be in [0, 2**32), got -1"),
    "unknown device": (lambda t: ["--device", "tpu"], "'device' must be cpu, cuda, cuda:N, mps or auto, got 'tpu'"),
    "negative alpha": (lambda t: ["--strategy", "dgl", "--alpha", "-3"], "'strategy.args.alpha' must be a finite number >= 0"),
    "nan alpha": (lambda t: ["--strategy", "dgl", "--alpha", "nan"], "'strategy.args.alpha' must be a finite number >= 0, got nan"),
    "zero epochs": (lambda t: ["--epochs", "0"], "'train.epochs' must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", sorted(FRESH))
def test_bad_input_is_one_line_exit_2_and_no_run_directory(tmp_path, case):
    setup, want = FRESH[case]
    out = tmp_path / "out"
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(out), *setup(tmp_path), *SMALL[4:])
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert want in err, (case, err)
    assert not out.exists()


def test_out_that_is_a_file_or_cannot_be_made(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for out, want in ((mine, "exists and is not a directory"), (mine / "run", "cannot create the run directory")):
        rc, err = cli(tmp_path, "train", "--quiet", "--out", str(out), "--epochs", "1", *SMALL)
        assert rc == 2 and len(err.splitlines()) == 1 and want in err and str(out) in err, err
    assert mine.read_text() == "mine"


def test_a_users_own_config_in_out_is_never_replaced(tmp_path):
    """--out DIR holding only the user's config.json silently replaced that file."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(out), "--epochs", "1", *SMALL)
    assert rc == 2 and "is not an mmsent run directory" in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == '{"my": "settings"}'


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    rc, err = cli(root, "train", "--quiet", "--epochs", "2", "--out", str(root / "run"), *SMALL)
    assert rc == 0, err
    return root / "run"


DAMAGE = {
    "truncated last.pt": (lambda r: (r / "last.pt").write_bytes((r / "last.pt").read_bytes()[:200]), "last.pt: damaged checkpoint"),
    "empty last.pt": (lambda r: (r / "last.pt").write_bytes(b""), "last.pt: damaged checkpoint"),
    "missing best.pt": (lambda r: (r / "best.pt").unlink(), "best.pt: missing"),
    "config.json not JSON": (lambda r: (r / "config.json").write_text("{not json"), "config.json: damaged run config, not valid JSON"),
    "last.pt of another model": (lambda r: torch.save({**torch.load(r / "last.pt", weights_only=True), "model": {"w": torch.zeros(1)}},
                                                      r / "last.pt"), "last.pt: does not fit this run's model"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_directory_on_resume_says_what_is_damaged(tmp_path, finished_run, case):
    damage, want = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damage(run)
    before = contents(run)
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(run), "--resume", "--epochs", "3")
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert want in err and ("another --out" in err or "start" in err), (case, err)
    assert contents(run) == before


def test_kill_9_mid_training_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    import signal
    import time

    args = ["train", "--quiet", "--strategy", "dgl", "--epochs", "8", "train.patience=100", *SMALL]
    rc, err = cli(tmp_path, *args, "--out", str(tmp_path / "straight"))
    assert rc == 0, err
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args, "--out", str(run)], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = run / "metrics.jsonl"
    while p.poll() is None and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.05)  # no deadline: ends when epoch 3 is logged or the process exits
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "results.json").exists(), "the run finished before it could be killed"
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(run), "--resume")
    assert rc == 0, err
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "straight", run))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"] and a["probe"] == b["probe"]
    assert len(log.read_text().splitlines()) == 8


def test_an_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    """A crash while last.pt is written (here: the 3rd save raises after writing half a file) leaves
    the previous last.pt whole; resuming from it gives the uninterrupted numbers."""
    import mmsent.train as train
    from mmsent.config import load_config
    from mmsent.files import write_atomic

    def cfg(out, epochs):
        return load_config(None, [*SMALL, "strategy=dgl", f"train.epochs={epochs}", "train.patience=100",
                                  f"out={tmp_path / out}"])

    straight = train.fit(cfg("a", 4), quiet=True)
    real_save, calls = train.save_torch, []

    def crashing_save(path, obj):
        if Path(path).name == "last.pt":
            calls.append(path)
            if len(calls) == 2:  # the second write of last.pt (epoch 1) dies half-way
                def half(tmp):
                    Path(tmp).write_bytes(b"\x50\x4b half a zip")
                    raise KeyboardInterrupt("power cut")
                return write_atomic(Path(path), half)
        return real_save(path, obj)

    monkeypatch.setattr(train, "save_torch", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg("b", 4), quiet=True)
    monkeypatch.setattr(train, "save_torch", real_save)
    assert not (tmp_path / "b/last.pt.tmp").exists(), "the half-written file was left behind"
    ckpt = torch.load(tmp_path / "b/last.pt", weights_only=True)  # whole, not the half-written file
    assert ckpt["state"]["epoch"] == 0
    resumed = train.fit(cfg("b", 4), quiet=True, resume=True)
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]
