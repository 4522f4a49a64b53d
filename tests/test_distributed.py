"""Data parallelism (torchrun, gloo on CPU): every strategy on 2 ranks equals the one-process run.

Each rank takes its contiguous half of every global batch; gradients and per-batch statistics are
reduced where a one-process run would have the whole batch (mmsent/distributed.py). In float64 the
parameters after two epochs of steps (every epoch hook included: prototypes, blending weights, D&R's
diagnosis, UMT's teachers) and the gathered validation predictions match the one-process run to
1e-9; with 2 ranks only the order of floating-point sums differs.
"""
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

ROOT = Path(__file__).resolve().parents[1]
# settings under which each strategy's between-epoch machinery acts within two epochs
ARGS = {"unimodal": {"modality": "audio"}, "gblending": {"super_epoch": 1}, "dnr": {"reinit_epoch": 1},
        "umt": {"teacher_epochs": 2}, "dgl": {"alpha": 2.0}}
TOL = dict(rtol=1e-9, atol=1e-10)


def _double(ds):
    for split in (ds.train, ds.val, ds.test):
        split.x = {m: v.double() if v.is_floating_point() else v for m, v in split.x.items()}
        if split.y.is_floating_point():
            split.y = split.y.double()
    return ds


def run_steps(name: str, task_name: str) -> dict:
    """Two epochs of 12-sample global batches (the last one 8) with SGD + momentum, in float64."""
    ds = make_synthetic(n_modalities=3, n_train=32, n_val=10, n_test=4, task=task_name, num_classes=3)
    task = Regression() if task_name == "regression" else Classification(3)
    torch.manual_seed(0)
    cfg = {"dim": 6, "seq_len": 2, "hidden": 8, "dropout": 0.0, **STRATEGIES[name].needs_model}
    model = build_model(ModelConfig(**cfg), ds, task.out_dim).double()
    ds = _double(ds)
    s = STRATEGIES[name](model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), task, **ARGS.get(name, {}))
    s.batch_size, s.steps_per_epoch = 12, 3
    gen = torch.Generator().manual_seed(1)
    for epoch in range(2):
        s.on_epoch_start(epoch, ds)
        for batch in ds.train.batches(12, shuffle=True, generator=gen):
            s.train_step(s.dist.shard(batch))
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "val": s.branch_predictions(ds.val, batch_size=4), "state": s.state_dict()}


CASES = [(name, task) for name in sorted(STRATEGIES) for task in ("regression", "classification")]


def _worker(rank, world, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        got = {case: run_steps(*case) for case in CASES}
        assert Dist().active and Dist().world == world
        if rank == 0:
            torch.save(got, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(tmp / "store"), str(tmp / "out.pt")), nprocs=2, join=True)
    return torch.load(tmp / "out.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("name,task_name", CASES)
def test_two_ranks_equal_one_process(two_ranks, name, task_name):
    want, got = run_steps(name, task_name), two_ranks[(name, task_name)]
    for k, v in want["params"].items():
        torch.testing.assert_close(got["params"][k], v, **TOL, msg=f"{name}/{task_name}: parameter {k}")
    for k, v in want["val"].items():  # sharded evaluation gathers every sample once, in order
        torch.testing.assert_close(got["val"][k], v, rtol=1e-6, atol=1e-6, msg=f"{name}: val predictions {k}")


def test_one_process_dist_is_the_identity():
    d = Dist()
    assert not d.active and d.world == 1 and d.is_main
    g = torch.tensor([1.0, 2.0])
    d.grads([g, None])
    assert torch.equal(g, torch.tensor([1.0, 2.0])) and d.mean(3.5) == 3.5 and d.sum(2.0) == 2.0
    assert list(d.split_range(5)) == [0, 1, 2, 3, 4]
