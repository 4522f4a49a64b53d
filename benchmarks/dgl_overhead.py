"""Step time of DGL relative to vanilla, and of mmsent's one-backward DGL relative to the
two-backward Algorithm 1 of the paper, measured in one run on a MOSI-shaped model.

MOSI-shaped: MMSA ``aligned_50`` inputs (text 50x768 BERT features, audio 50x5, vision 50x20),
bidirectional LSTM encoders, the CubeMLP-style mixer head, batch 64. N = 2 drops vision; N = 6
adds three more modalities of the audio/vision kind.

    python benchmarks/dgl_overhead.py [--steps 30] [--batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsent.config import ModelConfig  # noqa: E402
from mmsent.data import Batch, Dataset, Split  # noqa: E402
from mmsent.dgl import zero_others  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.strategies import STRATEGIES  # noqa: E402
from mmsent.tasks import Regression  # noqa: E402

DIMS = {"text": 768, "audio": 5, "vision": 20, "m3": 5, "m4": 20, "m5": 35}


def mosi_batch(names, B, T=50):
    x = {m: torch.randn(B, T, DIMS[m]) for m in names}
    mask = {m: torch.ones(B, T, dtype=torch.bool) for m in names}
    # index: the positions in the split (strategy_cost's split is this batch), which valuation reads
    return Batch(x, mask, torch.empty(B).uniform_(-3, 3), [str(i) for i in range(B)], torch.arange(B))


def make_model(names, batch, **model):
    """``model``: ModelConfig overrides (a strategy's ``needs_model``, e.g. MMCosine's linear concat head)."""
    split = Split(batch.x, batch.mask, batch.y, batch.ids)
    ds = Dataset(split, split, split, "regression", 1, {m: DIMS[m] for m in names})
    cfg = ModelConfig(**{"encoder": "lstm", "dim": 64, "seq_len": 8, "hidden": 64, "dropout": 0.0, "fusion": "mlpmixer",
                         "encoder_hidden": 64, **model})
    return build_model(cfg, ds, 1)


class TwoBackwardDGL:
    """Algorithm 1 as the authors code it: backward alpha*sum L_m, drop the head's gradients,
    backward L_d on detached features, step."""

    def __init__(self, model, optimizer, task, alpha=1.0):
        self.model, self.optimizer, self.task, self.alpha = model, optimizer, task, alpha

    def train_step(self, batch):
        feats = self.model.encode(batch)
        uni = sum(self.task.loss(self.model.head(zero_others(feats, m)), batch.y) for m in feats)
        self.optimizer.zero_grad(set_to_none=True)
        (self.alpha * uni).backward(retain_graph=True)
        for p in self.model.head.parameters():
            p.grad = None
        self.task.loss(self.model.head({m: f.detach() for m, f in feats.items()}), batch.y).backward()
        self.optimizer.step()


def time_steps(runners, batch, steps, reference="vanilla", references=None):
    """Median step time per runner, and the median over rounds of each runner's time divided by
    the reference's time in the same round: the runners are interleaved step by step, so drift in
    machine load (this VM's speed wanders by 10-20 %) cancels in the per-round ratio.
    ``references`` maps a runner to a reference of its own (default: ``reference``)."""
    times = {k: [] for k in runners}
    for _ in range(3):
        for r in runners.values():
            r.train_step(batch)
    for _ in range(steps):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.train_step(batch)
            times[k].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    refs = references or {}
    ratios = {k: statistics.median(a / b for a, b in zip(v, times[refs.get(k, reference)])) for k, v in times.items()}
    return medians, ratios


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.steps} steps")
    print(f"{'N':>2}  {'vanilla ms':>10}  {'dgl ms':>8}  {'2-bwd ms':>9}  {'dgl/vanilla':>11}  {'dgl/2-bwd':>9}")
    for names in (["text", "audio"], ["text", "audio", "vision"], list(DIMS)):
        batch = mosi_batch(names, args.batch)
        task = Regression()
        runners = {}
        for key in ("vanilla", "dgl", "two_backward"):
            torch.manual_seed(0)
            model = make_model(names, batch)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            runners[key] = (TwoBackwardDGL(model, opt, task) if key == "two_backward"
                            else STRATEGIES[key](model, opt, task))
        t, r = time_steps(runners, batch, args.steps)
        _, r2 = time_steps({"dgl": runners["dgl"], "two_backward": runners["two_backward"]}, batch, args.steps,
                           reference="two_backward")
        print(f"{len(names):>2}  {t['vanilla'] * 1e3:10.1f}  {t['dgl'] * 1e3:8.1f}  {t['two_backward'] * 1e3:9.1f}  "
              f"{r['dgl']:11.3f}  {r2['dgl']:9.3f}")


if __name__ == "__main__":
    main()
