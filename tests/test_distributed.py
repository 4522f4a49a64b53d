"""Data parallelism (torchrun, gloo on CPU): every strategy on 2 ranks equals the one-process run.

Each rank takes its contiguous half of every global batch; gradients and per-batch statistics are
reduced where a one-process run would have the whole batch (mmsent/distributed.py). In float64 the
parameters after two epochs of steps (every epoch hook included: prototypes, blending weights, D&R's
diagnosis, UMT's teachers) and the gathered validation predictions match the one-process run to
1e-9; with 2 ranks only the order of floating-point sums differs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmsent.config import ModelConfig
from mmsent.data import make_synthetic
from mmsent.distributed import Dist
from mmsent.models import build_model
from mmsent.strategies import STRATEGIES
from mmsent.tasks import Classification, Regression
from mmsent.evaluate import branch_predictions, branch_summaries

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-9, atol=1e-10)


def _double(ds):
    for split in (ds.train, ds.val, ds.test):
        split.x = {m: v.double() if v.is_floating_point() else v for m, v in split.x.items()}
        if split.y.is_floating_point():
            split.y = split.y.double()
    return ds


def run_steps(name: str, task_name: str, resume: bool = False) -> dict:
    """Two epochs of 12-sample global batches (the last one 7: shards of 4 and 3) with SGD + momentum,
    in float64. ``resume``: after epoch 0 everything a checkpoint holds is saved and a fresh model,
    optimizer and strategy continue from it (what ``--resume`` does)."""
    def data():
        return make_synthetic(n_modalities=3, n_train=31, n_val=9, n_test=4, task=task_name, num_classes=3)

    shapes = data()  # float32: build_model's shape-recording pass runs before .double()
    task = Regression() if task_name == "regression" else Classification(3)
    cfg = {"dim": 6, "seq_len": 2, "hidden": 8, "dropout": 0.0, **STRATEGIES[name].needs_model}

    def build():
        torch.manual_seed(0)
        model = build_model(ModelConfig(**cfg), shapes, task.out_dim).double()
        s = STRATEGIES[name](model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), task,
                             **STRATEGIES[name].short_run)
        s.batch_size, s.steps_per_epoch = 12, 3
        return model, s

    model, s = build()
    ds = _double(data())
    gen = torch.Generator().manual_seed(1)
    for epoch in range(2):
        if resume and epoch == 1:
            ckpt = {"model": model.state_dict(), "opt": s.optimizer.state_dict(), "strategy": s.state_dict(),
                    "rng": torch.get_rng_state(), "gen": gen.get_state()}
            model, s = build()
            model.load_state_dict(ckpt["model"])
            s.optimizer.load_state_dict(ckpt["opt"])
            s.load_state_dict(ckpt["strategy"])
            torch.set_rng_state(ckpt["rng"])
            gen.set_state(ckpt["gen"])
        s.on_epoch_start(epoch, ds)
        for batch in ds.train.batches(12, shuffle=True, generator=gen):
            s.train_step(s.dist.shard(batch))
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "val": branch_predictions(s, ds.val, batch_size=4)}


CASES = [(name, task) for name in sorted(STRATEGIES) for task in ("regression", "classification")]


def _all_cases():
    return {case: (run_steps(*case), run_steps(*case, resume=True)) for case in CASES}


def _worker(rank, world, store, out, job):
    """One rank of a gloo group: ``job()`` (a module-level function), rank 0 saving what it returns."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        got = job()
        assert Dist().active and Dist().world == world
        if rank == 0:
            torch.save(got, out)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


def _on_two_ranks(tmp, job):
    mp.spawn(_worker, args=(2, str(tmp / "store"), str(tmp / "out.pt"), job), nprocs=2, join=True)
    return torch.load(tmp / "out.pt", weights_only=False)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _on_two_ranks(tmp_path_factory.mktemp("ddp"), _all_cases)


@pytest.mark.slow
@pytest.mark.parametrize("name,task_name", CASES)
def test_two_ranks_equal_one_process(two_ranks, name, task_name):
    """... and under 2 ranks a resumed run equals the uninterrupted one, bit for bit."""
    want, (got, resumed) = run_steps(name, task_name), two_ranks[(name, task_name)]
    for k, v in want["params"].items():
        torch.testing.assert_close(got["params"][k], v, **TOL, msg=f"{name}/{task_name}: parameter {k}")
        assert torch.equal(resumed["params"][k], got["params"][k]), f"{name}/{task_name}: resumed parameter {k}"
    for k, v in want["val"].items():  # sharded evaluation gathers every sample once, in order
        torch.testing.assert_close(got["val"][k], v, rtol=1e-6, atol=1e-6, msg=f"{name}: val predictions {k}")


# Dense prediction: both dense heads under vanilla, DGL and DGL-MH, GroupNorm (per-sample statistics;
# BatchNorm's are per shard) and class-weighted per-pixel CE with void pixels, so shards hold different
# numbers of (weighted) labelled pixels and are weighed by them (Dist.shard's `weigh`).
DENSE_CASES = [(fusion, name) for fusion in ("dense", "esanet") for name in ("vanilla", "dgl", "dgl_mh")]


def run_dense_steps(fusion: str, name: str) -> dict:
    """Two epochs of 8-image global batches (the last one 6) of rgbd_scenes, SGD + momentum, float64."""
    from mmsent.config import load_config
    from mmsent.data import build_dataset
    from mmsent.tasks import Segmentation

    over = [f"strategy={name}", f"model.fusion={fusion}", "model.norm=group", "model.dropout=0", "data.n_train=22",
            "data.n_val=6", "data.n_test=2", "data.height=16", "data.width=32", "model.width=4", "model.hidden=8",
            *(["model.blocks=[1,1]"] if fusion == "esanet" else [])]
    cfg = load_config(ROOT / "configs/rgbd_scenes.yaml", over)
    ds = build_dataset(cfg.data)
    task = Segmentation(6, class_weights=torch.tensor([0.5, 1.0, 3.0, 2.0, 1.5, 0.7]))
    torch.manual_seed(0)
    model = build_model(cfg.model, ds, task.out_dim).double()
    s = STRATEGIES[name](model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), task,
                         **{**dict(vars(cfg.strategy.settings)), **STRATEGIES[name].short_run})
    s.batch_size, s.steps_per_epoch = 8, 3
    ds = _double(ds)
    gen = torch.Generator().manual_seed(1)
    for epoch in range(2):
        s.on_epoch_start(epoch, ds)
        for batch in ds.train.batches(8, shuffle=True, generator=gen):
            s.train_step(s.dist.shard(batch, task.batch_weight))
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "val": branch_summaries(s, ds.val, batch_size=4)}


def _all_dense_cases():
    return {case: run_dense_steps(*case) for case in DENSE_CASES}


@pytest.fixture(scope="module")
def two_dense_ranks(tmp_path_factory):
    return _on_two_ranks(tmp_path_factory.mktemp("ddp_dense"), _all_dense_cases)


@pytest.mark.slow
@pytest.mark.parametrize("fusion,name", DENSE_CASES)
def test_two_ranks_equal_one_process_for_dense_prediction(two_dense_ranks, fusion, name):
    """The segmentation models on 2 ranks: parameters after two epochs equal one process's to 1e-9,
    and the validation confusion counts and loss sums, gathered from both ranks, are the same."""
    want, got = run_dense_steps(fusion, name), two_dense_ranks[(fusion, name)]
    for k, v in want["params"].items():
        torch.testing.assert_close(got["params"][k], v, **TOL, msg=lambda m: f"{fusion}/{name}: parameter {k}: {m}")
    for k, v in want["val"].items():
        torch.testing.assert_close(got["val"][k], v, rtol=1e-9, atol=1e-9, msg=f"{fusion}/{name}: val summary {k}")


def test_one_process_dist_is_the_identity():
    d = Dist()
    assert not d.active and d.world == 1 and d.is_main
    g = torch.tensor([1.0, 2.0])
    d.grads([g, None])
    assert torch.equal(g, torch.tensor([1.0, 2.0])) and d.mean(3.5) == 3.5 and d.sum(2.0) == 2.0
    assert list(d.split_range(5)) == [0, 1, 2, 3, 4]


MOSI = ROOT.parent / "shared" / "data" / "mosi" / "mosi_utterance.pkl"
# dropout masks are drawn per shard (not the slices of one full-batch mask): exact runs need none
EXACT = ["model.dropout=0", "train.epochs=2", "train.probe=false"]


def _train(tmp_path, out, *args, ranks=1):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
              if ranks > 1 else [sys.executable])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([*launch, str(ROOT / "cli.py"), "train", "--quiet", "--out", str(tmp_path / out), *args],
                       cwd=tmp_path, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((tmp_path / out / "results.json").read_text())


def _same_results(a, b, rel):
    assert a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"]
    for split in ("val", "test"):
        for branch, metrics in a[split].items():
            for k, v in metrics.items():
                assert v == pytest.approx(b[split][branch][k], rel=rel, abs=rel), (split, branch, k)


@pytest.mark.slow
@pytest.mark.skipif(not MOSI.is_file(), reason="needs ../shared/data/mosi")
def test_torchrun_two_ranks_writes_the_results_of_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 cli.py train` on real MOSI (DGL through the mixer): the same
    selected epoch and metrics as one process; only float32 summation order differs (1e-4)."""
    args = ["--dataset", "mosi", "--data", str(MOSI), "--strategy", "dgl", *EXACT]
    one = _train(tmp_path, "one", *args)
    two = _train(tmp_path, "two", *args, ranks=2)
    _same_results(two, one, 1e-4)
    # the files tell the two apart: ranks and their backend are recorded
    assert (two["provenance"]["world_size"], two["provenance"]["backend"]) == (2, "gloo")
    assert (one["provenance"]["world_size"], one["provenance"]["backend"]) == (1, None)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_torchrun_resume_equals_uninterrupted(tmp_path):
    """Under 2 ranks, 2 epochs then --resume to 4 == 4 epochs straight, metric for metric."""
    base = ["--strategy", "ogm_ge", "model.dropout=0", "train.probe=false", "data.batch_size=16", "model.dim=8",
            "model.hidden=16", "model.seq_len=2", "train.patience=100", "train.grad_probe=false", "data.n_train=48",
            "data.n_val=16", "data.n_test=16"]
    straight = _train(tmp_path, "a", *base, "train.epochs=4", ranks=2)
    _train(tmp_path, "b", *base, "train.epochs=2", ranks=2)
    resumed = _train(tmp_path, "b", *base, "train.epochs=4", "--resume", ranks=2)
    _same_results(resumed, straight, 0)


@pytest.mark.slow
def test_torchrun_refuses_batches_it_cannot_split(tmp_path):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(ROOT / "cli.py"), "train", "--quiet", "--out", str(tmp_path / "x"), "data.batch_size=1"],
                       cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode != 0 and "data.batch_size=1: with 2 ranks every training batch" in p.stderr
    assert not (tmp_path / "x").exists()


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""


def _processes(word: str) -> list[int]:
    """Processes whose command line holds ``word`` (Linux /proc)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and word in _read(f"{p}/cmdline")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank by its environment in /proc")
def test_a_killed_rank_leaves_one_line_naming_it_and_a_run_that_resumes(tmp_path):
    """kill -9 of rank 1 mid-training: rank 0's collective fails inside gloo. What it prints is one
    line naming the lost rank and the epochs kept (not gloo's 80-line traceback), and the folder
    resumes to the end under a fresh launch."""
    import signal
    import time

    run = tmp_path / "run"
    base = ["--standalone", "--nproc_per_node=2", str(ROOT / "cli.py"), "train", "--quiet", "--out", str(run),
            "data.n_train=400", "data.batch_size=16", "train.probe=false", "train.grad_probe=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # torchrun's agent polls its workers every 0.1 s and SIGTERMs the survivors of a failure: on a
    # loaded machine that came before rank 0's collective saw the lost peer, and rank 0 said
    # "interrupted by SIGTERM" (true, less specific). Polling every 3 s leaves gloo the first word.
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--monitor-interval=3", *base,
                            "train.epochs=400"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        while not (run / "last.pt").is_file() and job.poll() is None:  # an epoch is saved: the run is resumable
            time.sleep(0.2)
        time.sleep(1.0)
        victim = [p for p in _processes(str(run)) if "LOCAL_RANK=1" in _read(f"/proc/{p}/environ").split("\0")]
        assert len(victim) == 1, victim
        os.kill(victim[0], signal.SIGKILL)
        err = job.communicate(timeout=120)[1]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    ours = [line for line in err.splitlines() if line.startswith(("error:", "[rank0]", "interrupted"))]
    assert job.returncode != 0 and len(ours) == 1, err[-3000:]
    assert ours[0].startswith("error: rank 1 of 2 of this torchrun job stopped mid-step (") and "seen by rank 0" in ours[0]
    assert f"{run} holds epochs 0-" in ours[0] and ours[0].endswith("with --resume"), ours
    epochs = json.loads((run / "config.json").read_text())["train"]["epochs"]
    assert epochs == 400
    # the folder is whole: a fresh launch continues it (a shorter budget ends at once after one epoch)
    done = int(ours[0].split("holds epochs 0-")[1].split(",")[0])
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", *base, f"train.epochs={done + 2}", "--resume"],
                       cwd=tmp_path, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["epochs_run"] == done + 2
