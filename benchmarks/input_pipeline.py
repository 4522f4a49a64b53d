"""Clips per second of the audio-visual input pipeline: decoding every clip per batch (WAV read,
polyphase resampling, STFT, JPG decode and resize) against the cache of decoded inputs
(mmsent/data/av_cache.py: a slice, a batched STFT and a crop), with the STFT, crop and
normalisation done in the loader (``data.finish=loader``, as on a CPU) or left for the device
(``data.finish=device``, as on a GPU: the loader hands over waveforms and uint8 frames), with 0, 1
and 2 DataLoader workers, on avdigits (../shared/data/avdigits, its recipe) and on a CREMA-D-shaped
synthetic corpus (16 kHz WAVs of 2.5 s resampled to 22050 Hz, one 480 x 360 JPG per clip, the
paper's 257 x 299 spectrogram and 224 x 224 frames); beside them, what the work left for the
device costs when that device is this CPU, and the clips/s of one training step of the recipe's
model, so it shows whether the loader keeps up. Ratios, one run, training batches (augmentation on),
the second of two epochs.

    python benchmarks/input_pipeline.py [--clips 96] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsent.config import load_config  # noqa: E402
from mmsent.data import build_dataset  # noqa: E402
from mmsent.models import build_model  # noqa: E402
from mmsent.tasks import Classification  # noqa: E402
from mmsent.train import build_optimizer, build_strategy  # noqa: E402

AVDIGITS = ROOT.parent / "shared" / "data" / "avdigits"


def make_cremad_shaped(root: Path, n: int) -> Path:
    """``n`` clips in CREMA-D's layout: 16 kHz 2.5 s WAVs, one 480 x 360 JPG each, six classes."""
    from PIL import Image
    from scipy.io import wavfile

    emotions = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    rng = np.random.default_rng(0)
    names = [f"{1001 + i}_IEO_{emotions[i % 6]}_HI" for i in range(n)]
    (root / "AudioWAV").mkdir(parents=True)
    for i, name in enumerate(names):
        wave = rng.normal(0, 0.1, 40000).astype(np.float32)
        wavfile.write(root / "AudioWAV" / f"{name}.wav", 16000, (wave * 32767).astype(np.int16))
        d = root / "Image-01-FPS" / name
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)).save(d / "00001.jpg", quality=90)
    (root / "train.csv").write_text("".join(f"{m},{m.split('_')[2]}\n" for m in names[: n - 6]))
    (root / "test.csv").write_text("".join(f"{m},{m.split('_')[2]}\n" for m in names[n - 6:]))
    return root


def clips_per_second(split, batch: int, deferred: bool = False, device: torch.device | None = None) -> float:
    """The second of two epochs: workers already started and kept (as on CUDA, where they persist;
    forking them per epoch costs more than a small corpus's epoch), files in the page cache.
    ``device``: each batch counted once moved there (the work it carries done there)."""
    split.persistent = True
    gen = torch.Generator().manual_seed(0)
    for epoch in range(2):
        t0, n = time.perf_counter(), 0
        for b in split.batches(batch, shuffle=True, generator=gen, deferred=deferred):
            n += len(b.to(device, non_blocking=True) if device is not None else b)
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def finish_clips_per_second(split, batch: int) -> float:
    """The work a loader leaves for the device, done on this CPU (one thread)."""
    left = list(split.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(0), deferred=True))
    t0 = time.perf_counter()
    for b in left:
        b.ready()
    return sum(len(b) for b in left) / (time.perf_counter() - t0)


def model_clips_per_second(cfg, ds, batch: int, steps: int = 5) -> float:
    task = Classification(ds.num_classes)
    model = build_model(cfg.model, ds, task.out_dim)
    strategy = build_strategy(cfg, model, build_optimizer(model, cfg.train), task)
    b = ds.train.batch(torch.arange(batch))
    strategy.train_step(b)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        strategy.train_step(b)
    return steps * batch / (time.perf_counter() - t0)


def measure(name: str, recipe: str, data: Path, cache: Path, workers: list[int], batch: int, extra=()) -> None:
    base = [f"data.path={data}", *extra]

    def split(*over):
        return build_dataset(load_config(ROOT / "configs" / recipe, [*base, *over]).data).train

    rows = []
    for w in workers:
        plain = split(f"data.num_workers={w}", "data.finish=loader")
        cached = split(f"data.num_workers={w}", "data.finish=loader", f"data.cache={cache}")  # built here once
        left = split(f"data.num_workers={w}", "data.finish=device", f"data.cache={cache}")
        rows.append((w, clips_per_second(plain, batch), clips_per_second(cached, batch),
                     clips_per_second(left, batch, deferred=True)))
    finish = finish_clips_per_second(split("data.finish=device", f"data.cache={cache}"), batch)
    cfg = load_config(ROOT / "configs" / recipe, base)
    step = model_clips_per_second(cfg, build_dataset(cfg.data), batch)
    print(f"\n{name} (batch {batch}, {len(plain)} training clips; training step of the recipe's model: "
          f"{step:.0f} clips/s; the work left for the device, done on this CPU: {finish:.0f} clips/s)")
    print("| workers | decode clips/s | cache, finished in the loader | cache, finish left for the device "
          "| cache / decode | cache (device finish) / decode |")
    print("|---|---|---|---|---|---|")
    for w, d, c, f in rows:
        print(f"| {w} | {d:.0f} | {c:.0f} | {f:.0f} | {c / d:.1f}x | {f / d:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=96, help="clips of the CREMA-D-shaped corpus")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if AVDIGITS.is_dir():
            measure("avdigits", "avdigits.yaml", AVDIGITS, tmp / "avdigits_cache", args.workers, args.batch)
        corpus = make_cremad_shaped(tmp / "CREMA-D", args.clips)
        measure("CREMA-D-shaped", "cremad.yaml", corpus, tmp / "cremad_cache", args.workers, args.batch,
                extra=["model.width=8", "train.probe=false"])


if __name__ == "__main__":
    main()
