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
from conftest import logged_epochs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "data.batch_size=32", "model.dim=8",
         "model.hidden=16", "model.seq_len=2"]


def contents(run: Path) -> dict:
    """What a run folder holds, but the lock's note of who last held it (rewritten by every holder)."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}


def cli(cwd, *args):
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True)
    return p.returncode, p.stderr.strip()


@pytest.fixture
def inproc(capsys, monkeypatch):
    """``cli.main`` in this process (a second less than a subprocess: the checks of a file or a value
    are the same code); returns (exit code, stderr). Warnings are pytest's here, so the cases that
    count warning lines run in a subprocess."""
    sys.path.insert(0, str(ROOT))
    import cli as cli_module

    def run(cwd, *args):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = cli_module.main(list(args))
        return rc, capsys.readouterr().err.strip()

    return run


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
    "negative alpha": (lambda t: ["--strategy", "dgl", "--alpha", "-3"], "'strategy.alpha' must be a finite number >= 0"),
    "nan alpha": (lambda t: ["--strategy", "dgl", "--alpha", "nan"], "'strategy.alpha' must be a finite number >= 0, got nan"),
    "zero epochs": (lambda t: ["--epochs", "0"], "'train.epochs' must be >= 1, got 0"),
    # finite but huge: Adam's float32 step size overflows inside torch (a RuntimeError once); SGD's
    # parameters become inf and the loss non-finite. Both are one line naming the step, with DGL too.
    "lr that overflows adam": (lambda t: ["train.lr=1e38"], "numeric overflow in the training step at epoch 0 step 0"),
    "lr that overflows adam under dgl": (lambda t: ["train.lr=3.4e37", "--strategy", "dgl"],
                                         "at epoch 0 step 1; lower train.lr or set train.grad_clip"),
    "lr that overflows sgd": (lambda t: ["train.lr=1e38", "train.optimizer=sgd"], "non-finite training loss"),
}


@pytest.mark.parametrize("case", ["negative lr", "feature width differs"])
def test_bad_input_through_a_real_process_is_one_line_exit_2(tmp_path, case):
    """The same cases as a user meets them: a process whose whole stderr is the one line."""
    setup, want = FRESH[case]
    out = tmp_path / "out"
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(out), *setup(tmp_path), *SMALL[4:])
    assert rc == 2 and err.splitlines() == [err] and want in err and not out.exists(), err


@pytest.mark.parametrize("case", sorted(FRESH))
def test_bad_input_is_one_line_exit_2_and_no_run_directory(tmp_path, case, inproc):
    setup, want = FRESH[case]
    out = tmp_path / "out"
    rc, err = inproc(tmp_path, "train", "--quiet", "--out", str(out), *setup(tmp_path), *SMALL[4:])
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
    while p.poll() is None and len(logged_epochs(log)) < 3:
        time.sleep(0.05)  # no deadline: ends when epoch 3 is logged or the process exits
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "results.json").exists(), "the run finished before it could be killed"
    # the dead process's lock is left behind, naming it; the kernel released it, so it is taken over
    assert (run / ".lock").read_text().startswith(f"PID {p.pid} on ")
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(run), "--resume")
    assert rc == 0, err
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "straight", run))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"] and a["probe"] == b["probe"]
    assert logged_epochs(log) == list(range(8))


def test_an_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    """A crash while last.pt is written (here: the 3rd save raises after writing half a file) leaves
    the previous last.pt whole; resuming from it gives the uninterrupted numbers."""
    import mmsent.rundir as rundir
    import mmsent.train as train
    from mmsent.config import load_config
    from mmsent.files import write_atomic

    def cfg(out, epochs):
        return load_config(None, [*SMALL, "strategy=dgl", f"train.epochs={epochs}", "train.patience=100",
                                  f"out={tmp_path / out}"])

    straight = train.fit(cfg("a", 4), quiet=True)
    real_save, calls = rundir.save_torch, []

    def crashing_save(path, obj):
        if Path(path).name == "last.pt":
            calls.append(path)
            if len(calls) == 2:  # the second write of last.pt (epoch 1) dies half-way
                def half(tmp):
                    Path(tmp).write_bytes(b"\x50\x4b half a zip")
                    raise KeyboardInterrupt("power cut")
                return write_atomic(Path(path), half)
        return real_save(path, obj)

    monkeypatch.setattr(rundir, "save_torch", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg("b", 4), quiet=True)
    monkeypatch.setattr(rundir, "save_torch", real_save)
    assert not list((tmp_path / "b").glob("last.pt*.tmp")), "the half-written file was left behind"
    ckpt = torch.load(tmp_path / "b/last.pt", weights_only=True)  # whole, not the half-written file
    assert ckpt["state"]["epoch"] == 0
    resumed = train.fit(cfg("b", 4), quiet=True, resume=True)
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]


# ---- issue #23: every file the program reads is checked; sizes are checked against memory ----

def tiny_bert_folder(root: Path, damage: str | None = None) -> Path:
    """A real (tiny) transformers model folder, then damaged as a careless or hostile user would."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = root / f"bert-{damage}"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(d)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(d)
    if damage in ("no weights", "hostile weights"):
        for p in d.glob("*.safetensors"):
            p.unlink()
    if damage == "hostile weights":
        (d / "pytorch_model.bin").write_bytes(pickle.dumps(Hostile(root / "pwned")))
    if damage == "no model_type":
        cfg = json.loads((d / "config.json").read_text())
        del cfg["model_type"]
        (d / "config.json").write_text(json.dumps(cfg))
    return d


def truncated_npz(t: Path) -> list[str]:
    arrays = {f"{split}/{k}": v for split, part in views().items() for k, v in part.items() if k != "id"}
    np.savez(t / "views.npz", **arrays)
    data = (t / "views.npz").read_bytes()
    (t / "views.npz").write_bytes(data[: len(data) * 2 // 3])
    return ["--dataset", "features", "--data", str(t / "views.npz")]


def garbage(path: Path) -> Path:
    path.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 400, dtype=np.uint8)))
    return path


def bert_case(damage):
    return lambda t: ["model.encoders.text=bert", f"model.bert_path={tiny_bert_folder(t, damage)}"]


def av_corpus(t: Path, n_train: int, n_test: int = 3) -> list[str]:
    from tests.test_av_data import SMALL as AV_SMALL, make_cremad

    return ["--dataset", "cremad", "--data", str(make_cremad(t / "CREMA-D", n_train, n_test)), *AV_SMALL]


FILES = {
    "truncated .npz": (truncated_npz, "views.npz: not a loadable .npz"),
    "binary garbage as --config": (lambda t: ["--config", str(garbage(t / "my.yaml"))],
                                   "my.yaml: not a text file (binary data where YAML was expected)"),
    "bert folder without weights": (bert_case("no weights"), "not a loadable local transformers model (OSError"),
    "bert folder with hostile weights": (bert_case("hostile weights"),
                                         "not a loadable local transformers model (UnpicklingError"),
    "bert config without model_type": (bert_case("no model_type"), "Should have a `model_type` key"),
    "string array listed as a modality": (lambda t: write_views(t, **{f"{s}__names": np.array(["x"] * n) for s, n in
                                                                      (("train", 8), ("valid", 4), ("test", 5))})
                                          + ["data.modalities=[a, names]"],
                                          "train['names'] must be a numeric (N, T, F) array, got shape (8,) dtype <U1"),
    "class id far beyond the classes present": (lambda t: write_views(t, test__classification_labels=np.array([0, 1, 2, 0, 5000])),
                                                "test['classification_labels'] holds class id 5000, but only 4 distinct"),
    "model far beyond memory": (lambda t: ["model.hidden=200000", "model.dim=100000"],
                                "G parameters and needs about"),
    "synthetic data far beyond memory": (lambda t: ["data.n_train=10000000000"], "need about"),
    "BatchNorm with data.batch_size=1": (lambda t: av_corpus(t, 12) + ["data.batch_size=1"],
                                         "data.batch_size=1: the model has BatchNorm layers"),
    "BatchNorm with a train split of one clip": (lambda t: av_corpus(t, 2) + ["data.valid_fraction=0.5"],
                                                 "the train split holds 1 sample: the model has BatchNorm layers"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_a_file_or_size_that_cannot_work_is_one_line_before_any_run_folder(tmp_path, case, inproc):
    setup, want = FILES[case]
    out = tmp_path / "out"
    rc, err = inproc(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(out), *SMALL[4:], *setup(tmp_path))
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert want in err, (case, err)
    assert not out.exists() and not (tmp_path / "pwned").exists()


SPECS = {
    "binary garbage": (None, "not a text file"),
    "space is a list": ("space: [1, 2]\n", "'space' must be a mapping, got [1, 2]"),
    "trials is a string": ("trials: '5'\nspace: {strategy.alpha: {low: 0, high: 1}}\n", "key 'trials' must be int, got '5'"),
    "a parameter is not a mapping": ("space: {strategy.alpha: 3}\n", "section 'space.strategy.alpha' must be a mapping, got 3"),
    "low is a string": ("space: {strategy.alpha: {low: a, high: 1}}\n", "key 'space.strategy.alpha.low' must be float, got 'a'"),
    "an unknown key": ("spaces: {}\n", "unknown key 'spaces'"),
    # the one checking mechanism (config.from_dict) reaches inside the space and its lists
    "a seed is a string": ("seeds: [0, x]\nspace: {train.lr: {low: 0.1, high: 1}}\n", "key 'seeds[1]' must be int"),
    "an unknown parameter key": ("space: {train.lr: {low: 0.1, high: 1, step: 2}}\n",
                                 "unknown key 'space.train.lr.step'"),
    "a log range from 0": ("space: {train.lr: {low: 0, high: 1, log: true}}\n",
                           "key 'space.train.lr.low' must be > 0 for a log range, got 0.0"),
    "a space key that is not text": ("space: {1: {low: 0.1, high: 1}}\n", "must be str, got 1"),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_a_malformed_sweep_spec_is_one_line(tmp_path, case, inproc):
    text, want = SPECS[case]
    spec = tmp_path / "spec.yaml"
    garbage(spec) if text is None else spec.write_text(text)
    rc, err = inproc(tmp_path, "sweep", str(spec), "--out-dir", str(tmp_path / "sweeps"))
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert want in err and "spec.yaml" in err, (case, err)
    assert not (tmp_path / "sweeps").exists()


def _log_lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


READBACK = {  # damage -> (command, what the one line says)
    "report on a truncated results.json": (lambda r: (r / "results.json").write_text((r / "results.json").read_text()[:300]),
                                           ["report"], "results.json: damaged results file, not valid JSON"),
    "plot on a garbage log line": (lambda r: (r / "metrics.jsonl").write_text("\n".join(["garbage", *_log_lines(r)]) + "\n"),
                                   ["plot"], "metrics.jsonl: line 1 is not an epoch record"),
    "plot on an empty log": (lambda r: (r / "metrics.jsonl").write_text(""), ["plot"], "metrics.jsonl: no epoch logged yet"),
    "resume with a garbage line inside the log": (
        lambda r: (r / "metrics.jsonl").write_text("\n".join([_log_lines(r)[0], "{not json", *_log_lines(r)[1:]]) + "\n"),
        ["train", "--quiet", "--resume", "--epochs", "3", "--out"], "metrics.jsonl: line 2 is not an epoch record"),
}


@pytest.mark.parametrize("case", sorted(READBACK))
def test_a_damaged_file_read_back_is_one_line(tmp_path, finished_run, case, inproc):
    damage, command, want = READBACK[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damage(run)
    before = contents(run)
    extra = ["--out", str(tmp_path / "figs")] if command == ["plot"] else []
    rc, err = inproc(tmp_path, *command, str(run), *extra)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert want in err and str(run) in err, (case, err)
    assert contents(run) == before and not (tmp_path / "figs").exists()


def test_a_log_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path, finished_run):
    """A crash (or a full disk) mid-append leaves half a line at the end: --resume redoes that epoch."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    lines = _log_lines(run)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:40])
    rc, err = cli(tmp_path, "train", "--quiet", "--resume", "--epochs", "3", "--out", str(run))
    assert rc == 0, err
    assert logged_epochs(run / "metrics.jsonl") == [0, 1, 2]


def test_out_that_is_a_symlink_to_an_empty_folder_is_refused_and_nothing_is_left_beside_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    rc, err = cli(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(tmp_path / "link"), *SMALL)
    assert rc == 2 and len(err.splitlines()) == 1 and "is a symbolic link" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "link"] and not any((tmp_path / "empty").iterdir())


def test_a_probe_that_cannot_be_fitted_is_skipped_and_the_run_kept(tmp_path):
    """One class in train, others in validation/test: the linear probe crashed in scikit-learn after
    training and the run had no results.json."""
    args = write_views(tmp_path, train__classification_labels=np.zeros(8, int))
    out = tmp_path / "run"
    rc, err = cli(tmp_path, "train", "--quiet", "--epochs", "2", "--out", str(out), *args, *SMALL[4:])
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["probe"] == {m: {"skipped": "the train split holds a single class (0); a classifier needs two"}
                            for m in ("a", "b")}
    assert "warning: linear probes skipped: the train split holds a single class" in err
    rc, err = cli(tmp_path, "report", str(out))
    assert rc == 0, err


def test_arrays_that_are_not_used_as_modalities_are_named(tmp_path):
    """An object or string array was dropped without a word and the run trained on the others."""
    names = {f"{s}__{k}": np.array([v] * n, dtype=object if k == "names" else None)
             for s, n in (("train", 8), ("valid", 4), ("test", 5)) for k, v in (("names", "x"), ("tags", "y"))}
    out = tmp_path / "run"
    rc, err = cli(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(out), *write_views(tmp_path, **names), *SMALL[4:])
    assert rc == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "split 'train': not used as modalities" in warned[0], err
    assert "'names' (shape (8,), dtype object)" in warned[0] and "'tags' (shape (8,), dtype <U1)" in warned[0], err
    assert set(json.loads((out / "results.json").read_text())["test"]) == {"multi", "a", "b"}


def test_a_last_training_batch_of_one_joins_the_batch_before_it_with_batchnorm(tmp_path):
    """9 training clips in batches of 4 left a last batch of one, which training BatchNorm rejects."""
    out = tmp_path / "run"
    rc, err = cli(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(out), *av_corpus(tmp_path, 12))
    assert rc == 0, err
    notes = [line for line in err.splitlines() if "last training batch" in line]
    assert notes == ["note: the last training batch would hold 1 sample, which BatchNorm cannot train on; it joins "
                     "the batch before it (5 samples)"], err


def test_a_failed_write_says_what_would_fix_it(tmp_path):
    """Space (disk or quota full, a file-size limit) and other causes (permissions, read-only) get
    different advice: freeing space does not help a folder the user cannot write."""
    import errno

    from mmsent.files import write_failed

    full = str(write_failed(tmp_path / "x", OSError(errno.ENOSPC, "No space left on device")))
    denied = str(write_failed(tmp_path / "x", OSError(errno.EACCES, "Permission denied")))
    assert full.startswith(f"{tmp_path / 'x'}: cannot write (No space left on device; ") and "free some space" in full
    assert "(Permission denied; " in denied and "free some space" not in denied and "pass another folder" in denied


def test_two_processes_writing_one_file_do_not_take_each_others_temporary_file(tmp_path):
    """Two sweep workers wrote the same plot at the end: with one shared temporary name, one renamed
    the other's half-written file away and the other failed ("No such file or directory")."""
    import multiprocessing

    from mmsent.files import write_atomic

    target = tmp_path / "plot.png"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)

    def write(tmp, barrier=barrier):
        tmp.write_bytes(b"a")
        barrier.wait()  # both temporary files exist before either is renamed
        tmp.write_bytes(b"ab")

    procs = [ctx.Process(target=write_atomic, args=(target, write)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0] and target.read_bytes() == b"ab"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_step_whose_activations_cannot_fit_is_refused_before_any_allocation(tmp_path, inproc, monkeypatch):
    """Bounds before work: the parameters fit, but an LSTM over 50,000 steps keeps per-step state for
    the backward pass (B x L x 12 hidden floats, ~2.5 GiB here); on a 1 GiB device that is one line
    naming the modality, its size and the file, exit 2, and no run folder."""
    import mmsent.resources as resources

    monkeypatch.setattr(resources, "memory_bytes", lambda device: 2**30)
    out = tmp_path / "out"
    data = write_views(tmp_path, train__b=np.ones((8, 50_000, 4), np.float32))
    rc, err = inproc(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(out), *data, "model.hidden=128")
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "modality 'b' of " in err and "views.pkl has 50000 steps x 4 features" in err, err
    assert "GiB, more than the 1.0 GiB" in err and "lower data.batch_size" in err, err
    assert not out.exists()
    # the same file with a batch of one fits the budget (about 0.3 GiB): the estimate scales with B
    rc, err = inproc(tmp_path, "train", "--dry-run", "--out", str(out), *data, "model.hidden=128", "data.batch_size=1")
    assert rc == 0, err


def test_an_lstm_over_a_very_long_sequence_is_said_before_it_starts(tmp_path, inproc, monkeypatch):
    """A modality longer than LONG_SEQUENCE read by an LSTM: one native call per pass that no signal
    interrupts, so the run says so (naming the modality, the file and the way out) before the first
    step; a short one says nothing, and the same long one read by an MLP says nothing either. (The
    bound is lowered to 300 steps here so that the dry run's shape probe stays quick.)"""
    import mmsent.resources as resources

    monkeypatch.setattr(resources, "LONG_SEQUENCE", 300)
    data = write_views(tmp_path, train__b=np.ones((8, 400, 4), np.float32))
    base = ["train", "--dry-run", "--out", str(tmp_path / "out"), *data]
    rc, err = inproc(tmp_path, *base)
    assert rc == 0, err
    warn = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "modality 'b' of " in warn[0] and "views.pkl has 400 steps" in warn[0], err
    assert "model.encoders.b=mlp" in warn[0]
    rc, err = inproc(tmp_path, *base, "model.encoders.b=mlp")
    assert rc == 0 and "warning" not in err, err
    rc, err = inproc(tmp_path, *base[:-4], *write_views(tmp_path))
    assert rc == 0 and "warning" not in err, err


def test_a_modality_that_is_zero_everywhere_is_said(tmp_path, inproc):
    """Aligned pickles mark padding by all-zero steps; a modality that is zero in every train sample
    is therefore all padding. It trains (the other modalities carry the task) but is said, once,
    naming the file and key -- not torch's warning about a standard deviation of nothing."""
    data = write_views(tmp_path, train__b=np.zeros((8, 2, 4), np.float32))
    with pytest.warns(UserWarning) as caught:
        rc, err = inproc(tmp_path, "train", "--dry-run", "--out", str(tmp_path / "out"), *data)
    assert rc == 0, err
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "views.pkl: train['b'] is zero everywhere" in said[0], said
