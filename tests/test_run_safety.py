"""What happens to a run folder when the process does not end well, tested on real processes: a
second writer, Ctrl-C and kill, a table killed with -9, a full disk. Each case ends in one line,
no temporary file left behind, and a folder that either resumes to the uninterrupted numbers or is
gone so that the same command starts it again."""
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_reliability import ROOT, SMALL, cli
from conftest import logged_epochs  # noqa: E402

TRAIN = ["train", "--quiet", "--strategy", "dgl", "train.patience=100", *SMALL]


def _as_at_a_terminal() -> None:
    # A job started with `&` by a non-interactive shell (a CI script run in the background) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: Ctrl-C tests would see
    # the signal vanish (a table ran on to rc 0). The process under test gets Ctrl-C as at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cwd, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_at_a_terminal, **kw)


def wait_for_epochs(run: Path, n: int, p: subprocess.Popen) -> None:
    """Until ``n`` epochs are logged or the process ends (no deadline: a loaded machine is slow)."""
    log = run / "metrics.jsonl"
    while p.poll() is None and len(logged_epochs(log)) < n:
        time.sleep(0.02)


def lock_is_free(run: Path) -> bool:
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".run."))


def results(run: Path) -> dict:
    r = json.loads((run / "results.json").read_text())
    return {k: r[k] for k in ("test", "val", "best_epoch", "epochs_run", "probe")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("straight")
    rc, err = cli(root, *TRAIN, "--epochs", "10", "--out", str(root / "run"))
    assert rc == 0, err
    return root / "run"


def test_a_second_writer_is_refused_and_sigterm_stops_at_a_safe_point(tmp_path, straight):
    """Two `train --out D` at once both ran and wrote every epoch twice into one log."""
    run = tmp_path / "run"
    a = start(tmp_path, *TRAIN, "--epochs", "10", "--out", str(run))
    wait_for_epochs(run, 2, a)
    os.kill(a.pid, signal.SIGSTOP)  # frozen, still holding the folder: the refusal cannot race
    try:
        for extra in ([], ["--resume"]):
            rc, err = cli(tmp_path, *TRAIN, "--epochs", "10", "--out", str(run), *extra)
            assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert f"another mmsent process is writing this run (PID {a.pid} on" in err and str(run) in err, err
    finally:
        os.kill(a.pid, signal.SIGTERM)
        os.kill(a.pid, signal.SIGCONT)
    _, err = a.communicate()
    assert a.returncode == 128 + signal.SIGTERM, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"interrupted by SIGTERM: {run} holds epochs 0-") and \
        f"continue with: python cli.py train --out {run} --resume" in err, err
    assert not leftovers(tmp_path)
    saved = logged_epochs(run / "metrics.jsonl")[-1]
    assert f"holds epochs 0-{saved};" in err  # what it says is saved is what is on disk
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(run), "--resume")
    assert rc == 0, err
    assert results(run) == results(straight)
    assert logged_epochs(run / "metrics.jsonl") == list(range(10))


def test_ctrl_c_before_the_first_epoch_leaves_nothing_and_the_same_command_runs(tmp_path):
    run = tmp_path / "run"
    args = [*TRAIN, "--epochs", "1", "data.n_train=40000", "--out", str(run)]
    p = start(tmp_path, *args)
    while p.poll() is None and not (run / "config.json").is_file():
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate()
    assert p.returncode == 130, err
    assert err.strip() == f"interrupted by SIGINT: no epoch of {run} had finished, so nothing was kept; run the " \
                          "same command again", err
    assert not run.exists() and not leftovers(tmp_path) and not list(tmp_path.iterdir())


def test_a_table_killed_with_9_takes_its_run_with_it_and_ctrl_c_stops_it_cleanly(tmp_path):
    """`cli.py table` killed with kill -9 left its training child writing; the next table resumed the
    same folder beside it (metrics.jsonl epochs 0,1,1,2,2,...)."""
    table = ["table", "--dataset", "synthetic", "--methods", "DGL:strategy=dgl", "--seeds", "0", "--runs-dir",
             str(tmp_path / "runs"), "--out", str(tmp_path / "tables"), "train.epochs=30", "train.patience=100", *SMALL]
    run = tmp_path / "runs" / "dgl-s0"
    t = start(tmp_path, *table)
    wait_for_epochs(run, 2, t)
    assert t.poll() is None, t.communicate()
    t.kill()  # SIGKILL: the table cannot stop its child itself
    t.wait()
    while not lock_is_free(run):  # the child got SIGTERM from the kernel and stops at a safe point
        time.sleep(0.02)
    assert not leftovers(tmp_path)

    t = start(tmp_path, *table)  # resumes the run; Ctrl-C to the table alone stops both cleanly
    before = len(logged_epochs(run / "metrics.jsonl"))
    wait_for_epochs(run, before + 2, t)
    assert t.poll() is None, t.communicate()
    at_signal = logged_epochs(run / "metrics.jsonl")
    t.send_signal(signal.SIGINT)
    out, err = t.communicate()
    # Two CI runs on a loaded machine saw the table end with 0 here and nothing on stderr; say what
    # the run had done when Ctrl-C was sent, so the next one tells a late signal from a lost one.
    assert t.returncode == 130, (f"rc {t.returncode}; {before} epochs logged at the restart, {len(at_signal)} "
                                 f"({at_signal[-3:]}) at Ctrl-C, {len(logged_epochs(run / 'metrics.jsonl'))} at the end; "
                                 f"results.json {'exists' if (run / 'results.json').exists() else 'absent'}; "
                                 f"stdout {out[-500:]!r}; stderr {err[-1500:]!r}")
    assert err.strip().splitlines()[-1] == ("interrupted by SIGINT: the table stopped with 0 of 1 runs done; run the "
                                            "same command again to finish it (unfinished runs resume)"), err
    assert lock_is_free(run) and not leftovers(tmp_path)  # the table waited for its child

    rc, err = cli(tmp_path, *table)
    assert rc == 0, err
    assert logged_epochs(run / "metrics.jsonl") == list(range(30))


def limit_file_size(n: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


def test_a_write_that_fails_is_one_line_leaves_no_temporary_file_and_the_same_command_recovers(tmp_path, straight):
    """A file-size limit makes the first last.pt fail (the same error path as a full disk, EFBIG
    for ENOSPC): before, a torch.save traceback and a folder that neither --resume nor a new run took."""
    best, last = (straight / "best.pt").stat().st_size, (straight / "last.pt").stat().st_size
    assert best < last
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "cli.py"), *TRAIN, "--epochs", "10", "--out", str(run)]
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit_file_size((best + last) // 2))
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {run / 'last.pt'}: cannot write (File too large;") and "free on its filesystem" in err
    assert not run.exists() and not leftovers(tmp_path)  # nothing saved: nothing kept, nothing to block a re-run
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert results(run) == results(straight)


DRIVER = r'''
import json, os, shutil, subprocess, sys
from pathlib import Path
disk, cli, report, sizes = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
args = [a for a in json.loads(sys.argv[5])]
out = []
for free in sizes:
    for p in disk.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    total = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:  # leave `free` bytes
        f.write(b"\0" * max(0, total - free))
    run = disk / "run"
    a = subprocess.run([sys.executable, cli, *args, "--out", str(run)], capture_output=True, text=True)
    case = {"free": free, "rc": a.returncode, "err": a.stderr.strip(),
            "files": sorted(p.name for p in run.iterdir()) if run.is_dir() else None,
            "tmp": [p.name for p in disk.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".run.")]}
    (disk / "filler").unlink()
    again = ["--resume"] if (run / "last.pt").is_file() else []
    b = subprocess.run([sys.executable, cli, *args, "--out", str(run), *again], capture_output=True, text=True)
    case.update(again=again, rc2=b.returncode, err2=b.stderr.strip()[-300:])
    if b.returncode == 0:
        r = json.loads((run / "results.json").read_text())
        case["results"] = {k: r[k] for k in ("test", "val", "best_epoch", "epochs_run", "probe")}
        case["epochs"] = [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]
    out.append(case)
report.write_text(json.dumps(out))
'''


def test_a_full_disk_at_any_point_is_one_line_and_the_folder_resumes_or_restarts(tmp_path, straight):
    """A real full disk (a small tmpfs in a private mount namespace) at several points of a run; each
    time: one line naming the file and the free space, no temporary file keeping the disk full, and
    after space is freed the same command (or --resume, when a checkpoint was saved) finishes with
    the uninterrupted numbers."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) to mount a small tmpfs in a private namespace")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()[:120]}")
    best, last = ((straight / f).stat().st_size for f in ("best.pt", "last.pt"))
    page = 4096
    # where the disk fills: at config.json, at the first last.pt (both leave nothing to resume),
    # while a later epoch's last.pt is written (a checkpoint stays); the last one has room to finish
    room = best + last + 64 * 1024
    sizes = [page, best + last // 2, room + last // 2, 2 * room + 2 * last]
    disk, report = tmp_path / "disk", tmp_path / "report.json"
    disk.mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    args = [*TRAIN, "--epochs", "10"]
    script = (f"mount -t tmpfs -o size={4 * room + 4 * last} tmpfs {disk} && exec {sys.executable} "
              f"{tmp_path / 'driver.py'} {disk} {ROOT / 'cli.py'} {report} '{json.dumps(sizes)}' '{json.dumps(args)}'")
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    cases = json.loads(report.read_text())
    failed = [c for c in cases if c["rc"] != 0]
    assert len(failed) >= 3, cases  # the disk filled in the first three
    for c in cases:
        assert c["tmp"] == [], c  # no temporary file left to keep the disk full
        assert c["rc2"] == 0, c  # the folder resumed or restarted
        assert c["results"] == results(straight) and c["epochs"] == list(range(10)), c
        if c["rc"]:
            assert c["rc"] == 2 and len(c["err"].splitlines()) == 1 and "Traceback" not in c["err"], c
            assert "cannot write (No space left on device;" in c["err"] and "free on its filesystem" in c["err"], c
            assert c["files"] is None or "last.pt" in c["files"], c  # nothing saved: no folder at all
    assert any(c["again"] for c in failed), cases  # some filled after a checkpoint: resumed from it
    assert any(c["rc"] and not c["again"] for c in failed), cases  # some before: started again


@pytest.mark.parametrize("at_call", [1, 3])
def test_out_of_memory_while_training_is_one_line_and_leaves_a_resumable_or_no_folder(tmp_path, monkeypatch, at_call):
    """An allocation failure mid-run (here at the 1st or 3rd validation pass) ends the run with a
    RunError saying what to lower; with a checkpoint saved, the folder resumes, without one it is gone."""
    import mmsent.train as train
    from mmsent.config import load_config

    real, calls = train.evaluate, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == at_call:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*a, **kw)

    monkeypatch.setattr(train, "evaluate", failing)
    run = tmp_path / "run"
    cfg = load_config(None, [*SMALL, "strategy=dgl", "train.epochs=4", f"out={run}"])
    with pytest.raises(train.RunError) as e:
        train.fit(cfg, quiet=True)
    msg = str(e.value)
    assert msg.startswith("out of memory while training (CUDA out of memory. Tried to allocate 20.00 GiB); lower "
                          "data.batch_size or the model sizes"), msg
    if at_call == 1:
        assert not run.exists() and "--resume" not in msg
    else:
        assert msg.endswith(f"then continue with: python cli.py train --out {run} --resume")
        monkeypatch.setattr(train, "evaluate", real)
        assert train.fit(cfg, quiet=True, resume=True)["epochs_run"] == 4


def test_ctrl_c_stops_a_sweep_in_one_line_and_the_same_command_goes_on(tmp_path):
    """The running trial is marked failed by Optuna, its run folder stays whole and unlocked, and the
    same command then runs the trials still missing."""
    import optuna
    import yaml

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"config": "configs/synthetic.yaml", "overrides": ["strategy=dgl", "train.epochs=10"],
                                    "metric": "loss", "trials": 2, "seeds": [0],
                                    "space": {"strategy.alpha": {"low": 0.5, "high": 4.0}}}))
    cmd = ["sweep", str(spec), "--out-dir", str(tmp_path / "sw"), "train.patience=100", *SMALL]
    s = start(tmp_path, *cmd)
    while s.poll() is None and not any(len(logged_epochs(p)) >= 2 for p in (tmp_path / "sw").glob("*/trial-*/seed-0/metrics.jsonl")):
        time.sleep(0.02)
    assert s.poll() is None, s.communicate()
    s.send_signal(signal.SIGINT)
    _, err = s.communicate()
    assert s.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGINT: study 'tiny-") and "holds 0 finished trials (of 2), the one " \
        "running is marked failed; run the same command again to go on" in last, err
    assert "Traceback" not in err and not leftovers(tmp_path)
    (run,) = [p.parent for p in (tmp_path / "sw").glob("*/trial-*/seed-0/metrics.jsonl")]
    assert lock_is_free(run) and (run / "last.pt").is_file()
    rc, err = cli(tmp_path, *cmd)
    assert rc == 0, err
    (db,) = (tmp_path / "sw").glob("tiny-*.db")
    states = [t.state.name for t in optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}").trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1


def test_a_sweep_on_a_full_disk_stops_in_one_line_without_a_traceback(tmp_path):
    """A file-size limit fails the first trial's checkpoint (the full-disk path): Optuna logged the
    failed trial's traceback and the sweep went on failing trials. It now stops with one error line
    (Optuna's one-line failure record may precede it), no traceback."""
    args = [sys.executable, str(ROOT / "cli.py"), "sweep", "alpha", "--trials", "3", "--out-dir", str(tmp_path / "sweeps"),
            "--storage", f"journal:{tmp_path / 'study.log'}", "data.dataset=synthetic", *SMALL, "train.epochs=3"]
    # above a best.pt (about 30 kB), below a last.pt (about 67 kB): the first trial's first last.pt fails
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit_file_size(50_000))
    assert p.returncode == 2 and "Traceback" not in p.stderr + p.stdout, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped" in errors[0] and "cannot write" in errors[0], p.stderr


def test_out_of_memory_on_a_files_data_names_the_file_and_its_largest_modality(tmp_path, monkeypatch):
    """Sizes that come from a data file are not fixed by a smaller model: the one line names the
    file, the modality that takes the most and its size, beside the usual advice."""
    import pickle

    import numpy as np

    import mmsent.train as train
    from mmsent.config import load_config

    rng = np.random.default_rng(0)
    data = {s: {"id": [f"{s}{i}" for i in range(n)], "a": rng.normal(size=(n, 3)).astype(np.float32),
                "b": rng.normal(size=(n, 40, 4)).astype(np.float32), "classification_labels": np.arange(n) % 3}
            for s, n in (("train", 8), ("valid", 4), ("test", 4))}
    (tmp_path / "views.pkl").write_bytes(pickle.dumps(data))

    def failing(*a, **kw):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train, "evaluate", failing)
    cfg = load_config(None, ["data.dataset=features", f"data.path={tmp_path / 'views.pkl'}", "model.dim=8",
                             "model.hidden=16", "train.epochs=1", f"out={tmp_path / 'run'}"])
    with pytest.raises(train.RunError) as e:
        train.fit(cfg, quiet=True)
    assert f"the largest input is modality 'b' of {tmp_path / 'views.pkl'}, 40 steps x 4 features a sample; lower " \
           "data.batch_size" in str(e.value), str(e.value)
