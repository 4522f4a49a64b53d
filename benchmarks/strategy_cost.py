"""Step time of every strategy relative to vanilla, in one run, on the MOSI-shaped model of
``dgl_overhead.py`` (N = 3: BiLSTM encoders over aligned_50-shaped inputs, MLP-Mixer head).

Per-epoch hooks (prototypes, blending weights, D&R diagnosis, valuation, UMT's unimodal teachers) are run
once before timing, for epoch 6 (past every method's warm-up: OPM modulates, valuation re-samples, Greedy
may curate), and are not part of the step time; their cost is per epoch (UMT: once per run).
A strategy that needs its own head (MMCosine: linear concat; ReconBoost, Greedy, AMCo, LFM: their
references' models) is timed against a vanilla run on that same head, ``vanilla[fusion]``, and its ratio
is to that row.

    python benchmarks/strategy_cost.py [--steps 15]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dgl_overhead import make_model, mosi_batch, time_steps  # noqa: E402

from mmsent.data import Dataset, Split  # noqa: E402
from mmsent.strategies import STRATEGIES  # noqa: E402
from mmsent.tasks import Regression  # noqa: E402


EPOCH = 6  # past the warm-ups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    names = ["text", "audio", "vision"]
    torch.manual_seed(0)
    batch = mosi_batch(names, args.batch)
    split = Split(batch.x, batch.mask, batch.y, batch.ids)
    data = Dataset(split, split, split, "regression", 1, {m: v.shape[-1] for m, v in batch.x.items()})
    runners, reference = {}, {}
    for name, cls in STRATEGIES.items():
        needs = cls.needs_model
        base = f"vanilla[{needs['fusion']}]" if needs else "vanilla"
        if base not in runners:  # the vanilla reference on the head this strategy needs
            torch.manual_seed(0)
            model = make_model(names, batch, **needs)
            runners[base] = STRATEGIES["vanilla"](model, torch.optim.Adam(model.parameters(), lr=1e-4), Regression())
        if name == "vanilla":
            continue
        torch.manual_seed(0)
        model = make_model(names, batch, **needs)
        extra = {"modality": "text"} if name == "unimodal" else {}
        runners[name] = cls(model, torch.optim.Adam(model.parameters(), lr=1e-4), Regression(), **extra)
        runners[name].batch_size = args.batch
        runners[name].on_epoch_start(EPOCH, data)
        reference[name] = base
    t, ratio = time_steps(runners, batch, args.steps, references=reference)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, N = 3, "
          f"median of {args.steps} steps")
    print(f"{'strategy':>16}  {'ms/step':>8}  {'x vanilla':>9}  (median of per-round ratios)")
    for name, sec in sorted(t.items(), key=lambda kv: kv[1]):
        note = f"  (x {reference[name]})" if reference.get(name, "vanilla") != "vanilla" else ""
        print(f"{name:>16}  {sec * 1e3:8.1f}  {ratio[name]:9.2f}{note}")


if __name__ == "__main__":
    main()
