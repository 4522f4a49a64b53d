"""Step time of DGL (and DGL-MH) relative to vanilla on the dense RGB-D models (configs/rgbd_scenes.yaml:
two stride-4 encoders and the dense head; with --fusion esanet, ESANet's form on 32 x 48 scenes,
three stages of one block), measured in one run as a ratio, interleaved so machine load hits all
three alike.

    python benchmarks/dense_step.py [--steps 20] [--batch 16] [--fusion esanet]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsent.config import load_config  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.tasks import Segmentation  # noqa: E402
from mmsent.train import build_optimizer, build_strategy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fusion", choices=["dense", "esanet"], default="dense")
    args = ap.parse_args()
    torch.manual_seed(0)
    names = ("vanilla", "dgl", "dgl_mh")
    setups = {}
    for name in names:
        esanet = [("model.fusion", "esanet"), ("data.width", 48), ("model.blocks", [1, 1, 1])]
        cfg = load_config(ROOT / "configs/rgbd_scenes.yaml", [("strategy", name), ("data.n_train", args.batch),
                                                                ("data.n_val", 4), ("data.n_test", 4),
                                                                *(esanet if args.fusion == "esanet" else [])])
        ds = build_dataset(cfg.data)
        task = Segmentation(ds.num_classes)
        model = build_model(cfg.model, ds, task.out_dim)
        setups[name] = (build_strategy(cfg, model, build_optimizer(model, cfg.train), task),
                        ds.train.batch(torch.arange(args.batch)))
    times = {n: [] for n in names}
    for step in range(args.steps + 2):
        for name in names:
            strategy, batch = setups[name]
            t0 = time.perf_counter()
            strategy.train_step(batch)
            if step >= 2:  # warm-up steps left out
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["vanilla"])
    for name in names:
        print(f"{name:8s} median step {1000 * statistics.median(times[name]):7.1f} ms   ratio to vanilla "
              f"{statistics.median(times[name]) / base:.2f}")


if __name__ == "__main__":
    main()
