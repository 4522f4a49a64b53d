"""`cli.py sweep`: runs, resumes after a kill mid-trial, shares one study between two workers,
applies the best value, and rejects bad specs and storages with one line and exit code 2.

The kill/resume and two-worker tests run on SQLite and on a real PostgreSQL server when
``MMSENT_TEST_POSTGRES`` names one (``scripts/pg_throwaway.sh`` starts a throw-away cluster; CI does,
and sets ``MMSENT_REQUIRE_POSTGRES=1`` so that a missing server fails instead of skipping)."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.sweep import fmt  # noqa: E402

TINY = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.batch_size=32", "model.dim=8", "model.hidden=16",
        "model.seq_len=2", "train.grad_probe=false"]


def spec(tmp_path, **kw):
    body = {"config": "configs/synthetic.yaml", "overrides": ["strategy=dgl", "train.epochs=2"], "metric": "acc2_has0",
            "direction": "maximize", "trials": 2, "seeds": [0, 1],
            "space": {"strategy.alpha": {"type": "float", "low": 0.5, "high": 4.0, "log": True}}}
    body.update(kw)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


def load(tmp_path, name="tiny", storage=None):
    """The one study whose name starts with ``name`` (names carry the dataset and a config hash)."""
    if storage:
        (study,) = [s for s in optuna.get_all_study_names(storage) if s.startswith(name + "-")]
        return optuna.load_study(study_name=study, storage=storage)
    (db,) = (tmp_path / "sw").glob(f"{name}-*.db")
    return optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request):
    """None (each sweep's own SQLite file) or a fresh database on the PostgreSQL server of
    ``MMSENT_TEST_POSTGRES``, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    admin = os.environ.get("MMSENT_TEST_POSTGRES")
    if not admin:
        if os.environ.get("MMSENT_REQUIRE_POSTGRES"):
            pytest.fail("MMSENT_REQUIRE_POSTGRES is set but MMSENT_TEST_POSTGRES names no server")
        pytest.skip("no PostgreSQL server: set MMSENT_TEST_POSTGRES (scripts/pg_throwaway.sh starts one)")
    import psycopg

    name = f"mmsent_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def runs_of(trial) -> Path:
    return Path(trial.user_attrs["run_dir"])


def test_sweep_runs_stores_test_metrics_plots_and_applies(tmp_path):
    target = tmp_path / "best.yaml"
    target.write_text("strategy: dgl\ntrain: {epochs: 7}\n")
    rc = cli.main(["sweep", str(spec(tmp_path)), "--out-dir", str(tmp_path / "sw"), "--apply", str(target),
                   "--report", str(tmp_path / "sweep.md"), *TINY])
    assert rc == 0
    report = (tmp_path / "sweep.md").read_text()
    assert "python cli.py sweep" in report and report.count("| complete |") == 2 and "Best:" in report
    study = load(tmp_path)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    for t in done:
        assert len(t.user_attrs["val_per_seed"]) == 2
        assert t.value == pytest.approx(sum(t.user_attrs["val_per_seed"]) / 2)  # mean over seeds is optimised
        assert "acc2_has0" in t.user_attrs["test"]["multi"]
        runs = sorted(runs_of(t).glob("seed-*/results.json"))
        assert len(runs) == 2
        # the objective is the validation metric of each run, never its test metric
        vals = [json.loads(r.read_text())["val"]["multi"]["acc2_has0"] for r in runs]
        assert t.user_attrs["val_per_seed"] == pytest.approx(vals)
        assert f"| {fmt(t.user_attrs['test']['multi']['acc2_has0'])} | {fmt(t.user_attrs['test']['multi']['mae'])} |" in report
    assert (tmp_path / "sw" / f"{study.study_name}.png").stat().st_size > 1000
    applied = yaml.safe_load(target.read_text())
    assert applied["strategy"] == {"name": "dgl", "alpha": study.best_params["strategy.alpha"]}
    assert applied["train"] == {"epochs": 7}
    # the same command again: nothing left to run, no new trial
    assert cli.main(["sweep", str(spec(tmp_path)), "--out-dir", str(tmp_path / "sw"), *TINY]) == 0
    assert len(load(tmp_path).trials) == 2


def test_grid_sampler_covers_the_grid(tmp_path):
    s = spec(tmp_path, sampler="grid", trials=3, seeds=[0],
             space={"strategy.alpha": {"type": "float", "low": 1, "high": 3, "grid": [1, 2, 3]}})
    assert cli.main(["sweep", str(s), "--out-dir", str(tmp_path / "sw"), *TINY]) == 0
    assert sorted(t.params["strategy.alpha"] for t in load(tmp_path).trials) == [1, 2, 3]


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # train.lr is swept over a range whose low end makes the run non-finite: some trials fail
    s = spec(tmp_path, trials=3, seeds=[0], sampler="grid",
             space={"train.lr": {"type": "float", "low": 1e-3, "high": 1e30, "grid": [1e30, 1e-3, 2e-3]}},
             overrides=["strategy=dgl", "train.epochs=1", "train.optimizer=sgd"])
    cli.main(["sweep", str(s), "--out-dir", str(tmp_path / "sw"), *TINY])
    states = {t.params["train.lr"]: t for t in load(tmp_path).trials}
    assert states[1e30].state.name == "FAIL" and "non-finite" in states[1e30].user_attrs["error"]
    assert states[1e-3].state.name == "COMPLETE" and states[2e-3].state.name == "COMPLETE"


def _sweep_cmd(tmp_path, spec_path, *extra):
    return [sys.executable, str(ROOT / "cli.py"), "sweep", str(spec_path), "--out-dir", str(tmp_path / "sw"), *extra, *TINY]


@pytest.mark.slow
def test_resume_after_kill_mid_trial_at_once(tmp_path, storage):
    """Re-run within the heartbeat grace period: the killed trial stayed RUNNING for good and the
    study never reached its count. Its process is gone, so the restart fails it at once."""
    s = spec(tmp_path, trials=2, seeds=[0], overrides=["strategy=dgl", "train.epochs=40", "train.patience=100"])
    cmd = _sweep_cmd(tmp_path, s, "--heartbeat", "600", *(["--storage", storage] if storage else []))
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    logs = lambda: list((tmp_path / "sw").glob("tiny-*/trial-0000/seed-0/metrics.jsonl"))  # noqa: E731
    while p.poll() is None and not (logs() and logs()[0].read_text().count("\n") >= 2):
        time.sleep(0.2)  # no deadline: the loop ends when the trial logs epoch 2 or the process dies
    os.killpg(p.pid, signal.SIGKILL)  # mid-trial: epoch 2 of 40
    p.wait()
    assert load(tmp_path, storage=storage).trials[0].state.name == "RUNNING"
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)  # at once, well inside the grace period
    assert r.returncode == 0, r.stderr[-2000:]
    trials = load(tmp_path, storage=storage).trials
    assert trials[0].state.name == "FAIL"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2
    assert [t.number for t in trials] == list(range(len(trials)))


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, storage):
    """Two worker processes on one storage (each sweep's SQLite file, or one PostgreSQL database):
    every requested trial finishes once, none lost or repeated."""
    s = spec(tmp_path, trials=4, seeds=[0])
    extra = ["--storage", storage] if storage else []
    procs = [subprocess.Popen(_sweep_cmd(tmp_path, s, "--worker", str(w), *extra), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for w in (0, 1)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(o[-3000:] for o in outs)
    trials = load(tmp_path, storage=storage).trials
    assert all(t.state.name == "COMPLETE" for t in trials)
    # each worker stops once the study holds 4; the other's trial in flight may finish as a 5th
    assert 4 <= len(trials) <= 5
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none duplicated
    for t in trials:
        assert (runs_of(t) / "seed-0/results.json").is_file()
    announced = [line for out in outs for line in out.splitlines() if line.startswith("trial")]
    assert sorted(int(line.split()[1]) for line in announced) == sorted(t.number for t in trials)
    assert len({t.params["strategy.alpha"] for t in trials}) == len(trials)  # workers do not replay points


@pytest.mark.parametrize("body,msg", [
    ({"space": {"strategy.beta": {"low": 1, "high": 2}}}, "unknown config key 'strategy.beta'"),
    ({"space": {"strategy.alpah": {"low": 1, "high": 2}}}, "unknown config key 'strategy.alpah'"),
    ({"space": {"strategy.alpha": {"low": -1, "high": 2}}}, "'strategy.alpha' must be a finite number >= 0"),
    ({"space": {"train.nope": {"low": 1, "high": 2}}}, "unknown config key 'train.nope'"),
    ({"space": {"strategy.alpha": {"low": 2, "high": 2}}}, "empty range [2.0, 2.0]"),
    ({"space": {}}, "empty search space"),
    ({"metric": "accuracy"}, "unknown metric 'accuracy'"),
])
def test_bad_specs(tmp_path, body, msg):
    r = subprocess.run(_sweep_cmd(tmp_path, spec(tmp_path, **body)), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("url", ["postgresql://nobody@127.0.0.1:1/none", "mysql://nobody@127.0.0.1:1/none",
                                 "notadb://x"])
def test_unreachable_storage(tmp_path, url):
    r = subprocess.run(_sweep_cmd(tmp_path, spec(tmp_path), "--storage", url), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and url in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_other_data_gets_its_own_study(tmp_path):
    """`sweep alpha --dataset mosi` after `--dataset synthetic` reported the synthetic trials."""
    s = spec(tmp_path, trials=1, seeds=[0], overrides=["strategy=dgl", "train.epochs=1"])
    assert cli.main(["sweep", str(s), "--out-dir", str(tmp_path / "sw"), *TINY]) == 0
    assert cli.main(["sweep", str(s), "--out-dir", str(tmp_path / "sw"), *TINY, "data.feature_dim=4"]) == 0
    dbs = sorted((tmp_path / "sw").glob("tiny-synthetic-*.db"))
    assert len(dbs) == 2  # two studies, one finished trial each
    for db in dbs:
        study = optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}")
        assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_a_new_study_under_an_old_name_never_meets_the_old_runs(tmp_path):
    """Trial folders were keyed by study name alone: a fresh storage under a used name failed every
    trial with 'run directory exists and is not empty'."""
    s = spec(tmp_path, trials=1, seeds=[0], overrides=["strategy=dgl", "train.epochs=1"])
    for db in ("a", "b"):
        args = ["sweep", str(s), "--study", "same", "--storage", f"sqlite:///{tmp_path / db}.db", *TINY]
        assert cli.main([*args[:2], "--out-dir", str(tmp_path / "sw"), *args[2:]]) == 0
        study = optuna.load_study(study_name="same", storage=f"sqlite:///{tmp_path / db}.db")
        assert [t.state.name for t in study.trials] == ["COMPLETE"], db


def test_a_sweep_without_its_data_stops_before_any_trial(tmp_path):
    """`sweep alpha` without data printed 12 tracebacks, exited 1 and stored 12 failed trials."""
    env = {**os.environ, "MMSENT_MOSI": ""}  # set and empty: a checkout's cli.py does not point it at ../shared
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", "alpha", "--out-dir", str(tmp_path / "sw")],
                       cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "mosi data not found (looked at $MMSENT_MOSI" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "sw").exists()
