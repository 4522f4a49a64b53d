"""Six real views of avdigits (spoken digit + handwritten digit, 10 classes) as one feature pickle.

Like UCI's "multiple features" set (six views of handwritten digits), each view is a different
description of the same real clip, so each is informative alone, to a different degree:

    pixels    (n, 196)    the 28 x 28 image average-pooled 2 x 2
    profiles  (n, 56)     row and column ink profiles
    fourier   (n, 64)     |2-D FFT| of the image, the 8 x 8 lowest frequencies (shift-invariant)
    spectrum  (n, 129)    the recording's mean log-magnitude spectrum (n_fft 256)
    mfcc      (n, 20, 13) 13 MFCCs in 20 time segments (a sequence modality)
    envelope  (n, 20, 2)  log energy and zero-crossing rate in 20 time segments

Labels are ``classification_labels`` 0..9 (classes.txt order); splits are the corpus's own test
clips and every 10th train clip (sorted by id) as validation. The output is an MMSA-layout pickle
that ``python cli.py train --dataset features --data OUT`` reads (never committed: it is derived
from ../shared)::

    python studies/avdigits_views.py --src ../shared/data/avdigits --out data/avdigits_views.pkl
"""
from __future__ import annotations

import argparse
import csv
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dct
from scipy.io import wavfile

RATE, N_FFT, HOP, SEGMENTS = 8000, 256, 64, 20


def mel_filterbank(n_mels: int = 26) -> np.ndarray:
    """Triangular filters evenly spaced on the mel scale over 0..RATE/2: (n_mels, N_FFT // 2 + 1)."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(0), mel(RATE / 2), n_mels + 2))
    bins = np.fft.rfftfreq(N_FFT, 1 / RATE)
    fb = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, mid, hi = edges[i:i + 3]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


def segments(frames: np.ndarray, n: int = SEGMENTS) -> np.ndarray:
    """Mean of the frames in each of n equal time segments (frames repeated when fewer than n)."""
    idx = np.linspace(0, len(frames), n + 1)
    return np.stack([frames[int(a):max(int(a) + 1, int(np.ceil(b)))].mean(0) for a, b in zip(idx[:-1], idx[1:])])


def audio_views(path: Path, fb: np.ndarray) -> dict[str, np.ndarray]:
    rate, x = wavfile.read(path)
    assert rate == RATE, f"{path}: {rate} Hz, expected {RATE}"
    x = x.astype(np.float64) / 32768.0
    x = np.pad(x, (0, max(0, N_FFT - len(x))))
    n = 1 + (len(x) - N_FFT) // HOP
    frames = np.stack([x[i * HOP:i * HOP + N_FFT] for i in range(n)]) * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 129)
    logspec = np.log(power + 1e-10)
    mfcc = dct(np.log(power @ fb.T + 1e-10), type=2, norm="ortho", axis=1)[:, :13]
    energy = np.log((frames ** 2).sum(1) + 1e-10)
    zcr = (np.diff(np.sign(frames), axis=1) != 0).mean(1)
    return {"spectrum": logspec.mean(0), "mfcc": segments(mfcc), "envelope": segments(np.stack([energy, zcr], 1))}


def image_views(path: Path) -> dict[str, np.ndarray]:
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0  # (28, 28)
    return {"pixels": img.reshape(14, 2, 14, 2).mean((1, 3)).ravel(),
            "profiles": np.concatenate([img.mean(1), img.mean(0)]),
            "fourier": np.abs(np.fft.fft2(img))[:8, :8].ravel()}


def build(src: Path) -> dict:
    classes = [c.strip() for c in (src / "classes.txt").read_text().split() if c.strip()]
    with open(src / "splits.csv", newline="") as f:
        rows = sorted((r["clip"], r["label"], r["split"]) for r in csv.DictReader(f))
    fb = mel_filterbank()
    train_ids = [c for c, _, s in rows if s == "train"]
    valid = set(train_ids[9::10])
    out: dict = {"train": {}, "valid": {}, "test": {}}
    for clip, label, split in rows:
        part = "test" if split == "test" else ("valid" if clip in valid else "train")
        views = {**image_views(src / "frames" / clip / "0001.jpg"), **audio_views(src / "audio" / f"{clip}.wav", fb)}
        for k, v in {**views, "classification_labels": classes.index(label), "id": clip}.items():
            out[part].setdefault(k, []).append(v)
    for part in out.values():
        for k, v in part.items():
            part[k] = v if k == "id" else np.asarray(v, dtype=np.int64 if k == "classification_labels" else np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="../shared/data/avdigits")
    ap.add_argument("--out", default="data/avdigits_views.pkl")
    args = ap.parse_args()
    data = build(Path(args.src))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps(data, protocol=4))
    sizes = {k: len(v["id"]) for k, v in data.items()}
    shapes = {k: v.shape[1:] for k, v in data["train"].items() if k not in ("id", "classification_labels")}
    print(f"wrote {out}: {sizes}, views {shapes}")


if __name__ == "__main__":
    main()
