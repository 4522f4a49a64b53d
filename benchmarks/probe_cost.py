"""What the encoder probes add to a run: the probes' seconds against the same run's training
seconds (its epochs, validation included), on CMU-MOSI with configs/mosi.yaml, both measured in
one process, so the ratio holds on a loaded machine.

    python benchmarks/probe_cost.py [--data PATH] [--strategies vanilla dgl dgl_mh] [--seeds 0 1]
    python benchmarks/probe_cost.py --runs runs/mixing_heads/mosi_mlpmixer/*   # or read finished runs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmsent.files import read_epochs  # noqa: E402


def ratio_of(run: Path) -> tuple[float, float]:
    res = json.loads((run / "results.json").read_text())
    train = sum(r["seconds"] for r in read_epochs(run / "metrics.jsonl"))
    return res["probe_seconds"], train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/mosi/mosi_utterance.pkl"))
    ap.add_argument("--strategies", nargs="+", default=["vanilla", "dgl", "dgl_mh"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", nargs="+", help="finished run directories to read instead of training")
    args = ap.parse_args()
    rows = []
    if args.runs:
        rows = [(Path(r).name, *ratio_of(Path(r))) for r in args.runs if (Path(r) / "results.json").is_file()]
    else:
        from mmsent.config import load_config
        from mmsent.train import fit

        with tempfile.TemporaryDirectory() as tmp:
            for name in args.strategies:
                for seed in args.seeds:
                    out = Path(tmp) / f"{name}-s{seed}"
                    cfg = load_config(ROOT / "configs/mosi.yaml", [("data.path", args.data), ("strategy", name),
                                                                   ("seed", seed), ("out", str(out))])
                    fit(cfg, quiet=True)
                    rows.append((out.name, *ratio_of(out)))
    for name, probe, train in rows:
        print(f"  {name:28s} training {train:7.1f} s   probes {probe:5.2f} s   probes/training {probe / train:.3f}")
    ratios = [p / t for _, p, t in rows]
    print(f"probes/training over {len(rows)} runs: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
