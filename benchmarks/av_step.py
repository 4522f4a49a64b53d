"""Audio-visual step cost on CREMA-D-shaped input (spectrogram 257 x 299, one 224 x 224 frame,
6 classes, standard-width ResNet18 encoders), measured in one run:

* DGL step time relative to vanilla, with the concat head and with the MMTM head (whose
  train-mode BatchNorm makes DGL map its masked passes with vmap, each with its own batch
  statistics: every masked pass is a full pass through each stream's layers 3-4, so DGL runs that
  half of the network 1 + N times where vanilla runs it once);
* decoding: seconds to turn a batch of clips (WAV + JPG written here) into tensors, against the
  vanilla step time, i.e. how many DataLoader workers keep the model fed.

    python benchmarks/av_step.py [--batch 8] [--steps 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dgl_overhead import time_steps  # noqa: E402

from mmsent.config import ModelConfig  # noqa: E402
from mmsent.data import Batch, Dataset  # noqa: E402
from mmsent.data.av import AVSplit  # noqa: E402
from mmsent.data.av_corpus import Clip  # noqa: E402
from mmsent.data.av_decode import AVSettings  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.strategies import STRATEGIES  # noqa: E402
from mmsent.tasks import Classification  # noqa: E402


class Fixed:
    """A split of one in-memory batch (what build_model needs to record feature shapes)."""

    def __init__(self, batch):
        self.b, self.y = batch, batch.y

    def __len__(self):
        return len(self.b)

    def batch(self, index):
        i = index.tolist()
        return Batch({m: v[i] for m, v in self.b.x.items()}, {m: v[i] for m, v in self.b.mask.items()},
                     self.b.y[i], [self.b.ids[k] for k in i])


def av_batch(B):
    ones = torch.ones(B, 1, dtype=torch.bool)
    return Batch({"audio": torch.randn(B, 257, 299), "visual": torch.randn(B, 1, 3, 224, 224)},
                 {"audio": ones, "visual": ones}, torch.randint(0, 6, (B,)), [str(i) for i in range(B)])


def decode_seconds(B: int) -> float:
    """Median seconds to decode B clips (3 s WAV at 16 kHz resampled to 22.05 kHz, 1 JPG)."""
    from PIL import Image
    from scipy.io import wavfile

    with tempfile.TemporaryDirectory() as d:
        root, clips = Path(d), []
        for i in range(B):
            wavfile.write(root / f"{i}.wav", 16000, (np.random.randn(48000) * 3000).astype(np.int16))
            (root / f"f{i}").mkdir()
            Image.fromarray(np.random.randint(0, 255, (360, 480, 3), np.uint8)).save(root / f"f{i}" / "00000.jpg")
            clips.append(Clip(str(i), 0, "train", root / f"{i}.wav", root / f"f{i}"))
        split = AVSplit(clips, AVSettings(), train=True)
        times = []
        for s in range(5):
            t0 = time.perf_counter()
            split.batch(torch.arange(B), seed=s)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    batch = av_batch(args.batch).to(args.device)
    split = Fixed(batch)
    ds = Dataset(split, split, split, "classification", 6, {"audio": 1, "visual": 3},
                 kinds={"audio": "spectrogram", "visual": "frames"})
    task = Classification(6)
    print(f"CREMA-D-shaped batch of {args.batch} on {args.device}, {torch.get_num_threads()} threads")
    for fusion in ("concat", "mmtm"):
        runners = {}
        for name in ("vanilla", "dgl"):
            model = build_model(ModelConfig(fusion=fusion, hidden=0, dropout=0.0), ds, 6).to(args.device)
            opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
            runners[name] = STRATEGIES[name](model, opt, task, **({"alpha": 4.0} if name == "dgl" else {}))
        medians, ratios = time_steps(runners, batch, args.steps)
        print(f"  {fusion:6s} vanilla {medians['vanilla']:.3f} s/step   dgl {medians['dgl']:.3f} s/step   "
              f"dgl/vanilla {ratios['dgl']:.2f}")
        if fusion == "concat":
            step = medians["vanilla"]
    dec = decode_seconds(args.batch)
    print(f"  decoding {args.batch} clips: {dec:.3f} s = {dec / step:.2f} x a vanilla concat step "
          f"(workers needed to keep up: about {max(1, round(dec / step + 0.5))})")


if __name__ == "__main__":
    main()
