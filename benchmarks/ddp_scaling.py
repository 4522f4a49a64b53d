"""Step time of data-parallel training on 1 and on K CPU processes (gloo), in one run.

The MOSI-shaped model of ``dgl_overhead.py`` (N = 3 BiLSTM encoders over aligned_50-shaped inputs,
MLP-Mixer head), DGL's step, global batch 64: one process takes the whole batch; with K processes
each takes 64 / K and the gradients are all-reduced (mmsent/distributed.py). Each process uses
``cores / K`` threads, so the comparison is at equal hardware. Reported: median seconds per global
step and the speed-up (1-process time / K-process time).

    python benchmarks/ddp_scaling.py [--ranks 2] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dgl_overhead import make_model, mosi_batch  # noqa: E402

from mmsent.strategies import STRATEGIES  # noqa: E402
from mmsent.tasks import Regression  # noqa: E402

NAMES = ["text", "audio", "vision"]


def measure(rank: int, world: int, store: str, steps: int, batch_size: int, threads: int, out: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = mosi_batch(NAMES, batch_size)
    model = make_model(NAMES, batch)
    s = STRATEGIES["dgl"](model, torch.optim.Adam(model.parameters(), lr=1e-4), Regression())
    times = []
    for i in range(steps + 3):  # 3 warm-up steps
        if world > 1:
            dist.barrier()  # a global step ends when the slowest rank ends
        t0 = time.perf_counter()
        s.train_step(s.dist.shard(batch))
        if world > 1:
            dist.barrier()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(str(statistics.median(times)))
    if world > 1:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        measure(0, 1, "", args.steps, args.batch, cores, str(one))
        many = Path(tmp) / "many"
        mp.spawn(measure, args=(args.ranks, str(Path(tmp) / "store"), args.steps, args.batch,
                                max(1, cores // args.ranks), str(many)), nprocs=args.ranks, join=True)
        t1, tk = float(one.read_text()), float(many.read_text())
    print(f"torch {torch.__version__}, {cores} CPU cores, DGL step, global batch {args.batch}, median of {args.steps}")
    print(f"1 process  ({cores} threads): {t1 * 1e3:7.1f} ms/step")
    print(f"{args.ranks} processes ({max(1, cores // args.ranks)} thread(s) each): {tk * 1e3:7.1f} ms/step   "
          f"speed-up {t1 / tk:.2f}x")


if __name__ == "__main__":
    main()
