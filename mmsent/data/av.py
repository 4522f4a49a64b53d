"""Audio-visual corpora (CREMA-D, Kinetics-Sounds, VGGSound) read from their usual on-disk layout.

A corpus folder holds a split file, one WAV per clip and a folder of JPG frames per clip, anywhere
below the root (the layouts of the OGM-GE/DGL code, ``AudioWAV/<clip>.wav`` and
``Image-01-FPS/<clip>/*.jpg`` for CREMA-D, and class sub-folders for Kinetics-Sounds, all match):

* ``splits.csv`` with rows ``clip,label,split``; or
* ``train.csv`` + ``test.csv`` with rows ``clip,label`` (CREMA-D's 6698/744 split file); or
* ``vggsound.csv`` with rows ``youtube_id,start_seconds,label,split`` (clip ``<id>_<start:06d>``).

Classes: CREMA-D's six emotions in the authors' order; otherwise ``classes.txt`` when present, else
the sorted labels of the split file. Validation is carved from train (every k-th clip by id), so
model selection never sees the test clips; every test clip is scored.

Each clip is decoded when a batch asks for it (the corpora do not fit in memory as tensors): audio
resampled to ``sample_rate``, tiled or cut to ``(audio_frames - 1) * hop`` samples and turned into a
``log_spectrogram`` (the paper's 257 x 299 for CREMA-D); ``frames`` JPGs chosen one per equal
segment (random within it when training, its centre otherwise), random-resized-crop + flip when
training, resize otherwise, ImageNet normalisation.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmsent.checks import check, finite
from mmsent.data.batch import Batch, DataError, Dataset, batch_bounds

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # the OGM-GE/DGL label ids 0..5
HEADER_WORDS = {"clip", "id", "name", "file", "filename", "video", "youtube_id", "ytid", "path"}
VIDEO_EXTS = (".mp4", ".flv", ".avi", ".mkv", ".webm", ".mov")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Clip:
    id: str
    label: int
    split: str  # train | test
    wav: Path | None
    frames: Path | None  # folder of .jpg
    video: Path | None = None


@dataclass(frozen=True)
class AVSettings:
    """The ``data.*`` keys of an audio-visual corpus: how a clip becomes tensors."""

    sample_rate: int = 22050
    audio_frames: int = 299  # STFT frames (the paper: 257 x 299 on CREMA-D, 257 x 1004 on KS/VGGSound)
    n_fft: int = 512
    hop: int = 353
    frames: int = 1  # video frames per clip (1 on CREMA-D, 3 on KS/VGGSound)
    fps: int = 1  # frames per second extracted by `data prepare` from videos
    image_size: int = 224
    valid_fraction: float = 0.1  # validation carved from train (every k-th clip by id)
    num_workers: int = 0  # DataLoader workers decoding clips

    def __post_init__(self):
        for key in ("sample_rate", "audio_frames", "n_fft", "hop", "frames", "fps", "image_size"):
            check(key, getattr(self, key) >= 1, getattr(self, key), ">= 1")
        check("valid_fraction", finite(self.valid_fraction) and 0 < self.valid_fraction < 1, self.valid_fraction,
              "in (0, 1)")
        check("num_workers", self.num_workers >= 0, self.num_workers, ">= 0")

    @property
    def samples(self) -> int:
        return (self.audio_frames - 1) * self.hop  # centred STFT: 1 + samples // hop frames


def log_spectrogram(wave: Tensor, *, n_fft: int = 512, hop: int = 353, eps: float = 1e-7) -> Tensor:
    """``log(|STFT| + eps)`` with a periodic Hann window of ``n_fft`` and reflect padding (librosa's
    defaults): (..., samples) -> (..., n_fft // 2 + 1, frames). The paper's CREMA-D input is 257 x 299."""
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    return torch.log(spec.abs() + eps)


# ----------------------------------------------------------------------------------- split files
def _rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # the CREMA-D csv carries a BOM
            rows = [(i + 1, [c.strip() for c in r]) for i, r in enumerate(csv.reader(f)) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read split file ({e})") from None
    if rows and rows[0][1][0].lower() in HEADER_WORDS:
        rows = rows[1:]
    return rows


def read_split_file(root: Path, files: list[Path]) -> tuple[list[tuple[str, str, str]], Path]:
    """``[(clip, label, split)]`` from the first split file among ``files`` (the sorted listing of
    ``root``)."""
    def find(name):
        return next((p for p in files if p.name == name), None)

    out = []
    if (p := find("splits.csv")) is not None:
        for line, r in _rows(p):
            if len(r) < 3:
                raise DataError(f"{p}:{line}: expected clip,label,split, got {','.join(r)!r}")
            out.append((r[0], r[1], _split_name(p, line, r[2])))
        return out, p
    if (p := find("vggsound.csv")) is not None:
        for line, r in _rows(p):
            if len(r) < 4:
                raise DataError(f"{p}:{line}: expected youtube_id,start_seconds,label,split, got {','.join(r)!r}")
            try:
                start = int(float(r[1]))
            except ValueError:
                raise DataError(f"{p}:{line}: start_seconds {r[1]!r} is not a number") from None
            out.append((f"{r[0]}_{start:06d}", r[2], _split_name(p, line, r[3])))
        return out, p
    train, test = find("train.csv"), find("test.csv")
    if train is None or test is None:
        rows = split_from_folders(root, files)
        if rows:
            return rows, root
        raise DataError(f"{root}: no split file (looked for splits.csv, vggsound.csv, or train.csv + test.csv, "
                        "and for media in <split>/<class>/<clip> folders)")
    for split, p in (("train", train), ("test", test)):
        for line, r in _rows(p):
            if len(r) < 2:
                raise DataError(f"{p}:{line}: expected clip,label, got {','.join(r)!r}")
            out.append((r[0], r[1], split))
    return out, train


def split_from_folders(root: Path, files: list[Path]) -> list[tuple[str, str, str]]:
    """Rows from the class-folder layout of the OGM-GE/DGL Kinetics-Sounds code, where the media
    path names split and class: ``.../<train|test|val>/<class>/<clip>.wav`` (or a video). Empty
    when some media file does not follow it."""
    rows: dict[str, tuple[str, str, str]] = {}
    for p in files:
        if p.suffix.lower() not in (".wav", *VIDEO_EXTS):
            continue
        parts = p.relative_to(root).parts
        at = [i for i, part in enumerate(parts[:-2]) if part.lower() in ("train", "test", "val", "valid")]
        if not at:
            return []
        i = at[-1]
        rows.setdefault(p.stem, (p.stem, parts[i + 1], "train" if parts[i].lower() == "train" else "test"))
    return list(rows.values())


def _split_name(path: Path, line: int, value: str) -> str:
    v = value.lower()
    if v in ("train", "training"):
        return "train"
    if v in ("test", "testing", "val", "valid", "validation"):
        return "test"  # the corpora's own held-out part; our validation is carved from train
    raise DataError(f"{path}:{line}: split {value!r} is not train or test")


def class_names(dataset: str, files: list[Path], labels: list[str]) -> list[str]:
    if dataset == "cremad":
        return list(CREMAD_CLASSES)
    listed = next((p for p in files if p.name == "classes.txt"), None)
    if listed is not None:
        return [c.strip().replace(" ", "_") for c in listed.read_text().splitlines() if c.strip()]
    return sorted({label.replace(" ", "_") for label in labels})


# ----------------------------------------------------------------------------------- media
def index_media(files: list[Path]) -> dict[str, dict[str, Path]]:
    """Clip id -> path of its WAV, its frames folder and its video."""
    found = {"wav": {}, "frames": {}, "video": {}}
    for p in files:
        suffix = p.suffix.lower()
        if suffix == ".wav":
            found["wav"].setdefault(p.stem, p)
        elif suffix in (".jpg", ".jpeg"):
            found["frames"].setdefault(p.parent.name, p.parent)
        elif suffix in VIDEO_EXTS:
            found["video"].setdefault(p.stem, p)
    return found


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1] at ``sample_rate`` (polyphase resampling, scipy)."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable WAV file ({e})") from None
    if data.size == 0:
        raise DataError(f"{path}: WAV file holds no samples")
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(1)
    if rate != sample_rate:
        r = Fraction(sample_rate, rate)
        data = resample_poly(data, r.numerator, r.denominator).astype(np.float32)
    return np.clip(data, -1.0, 1.0)


def check_wav(path: Path) -> None:
    """Header check at load time, so a corrupt file fails before training starts, naming it."""
    from scipy.io import wavfile

    try:
        _, data = wavfile.read(path, mmap=True)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable WAV file ({e})") from None
    if data.size == 0:
        raise DataError(f"{path}: WAV file holds no samples")


def fit_length(wave: np.ndarray, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """Tile a short clip (as the authors' ``np.tile``), cut a long one: at random when training,
    centred otherwise."""
    if len(wave) <= n:
        return np.tile(wave, math.ceil(n / len(wave)))[:n]
    start = int(rng.integers(0, len(wave) - n + 1)) if rng else (len(wave) - n) // 2
    return wave[start:start + n]


def random_resized_crop(w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """The box (left, top, right, bottom) of torchvision's RandomResizedCrop sampling rule."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    side = min(w, h)  # fallback: the central square
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def load_frames(folder: Path, spec: AVSettings, rng: np.random.Generator | None) -> np.ndarray:
    """(T, 3, S, S) float32: one frame per equal segment of the clip's sorted frames."""
    from PIL import Image, UnidentifiedImageError

    files = frame_files(folder)
    if not files:
        raise DataError(f"{folder}: no .jpg frames")
    bounds = np.linspace(0, len(files), spec.frames + 1)
    out = []
    for t in range(spec.frames):
        lo, hi = int(bounds[t]), max(int(bounds[t]) + 1, int(math.ceil(bounds[t + 1])))
        i = int(rng.integers(lo, hi)) if rng else (lo + hi - 1) // 2
        path = files[min(i, len(files) - 1)]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if rng is not None:
                    im = im.resize((spec.image_size, spec.image_size), Image.BILINEAR,
                                   box=random_resized_crop(*im.size, rng))
                    if rng.random() < 0.5:
                        im = im.transpose(Image.FLIP_LEFT_RIGHT)
                else:
                    im = im.resize((spec.image_size, spec.image_size), Image.BILINEAR)
                x = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
        out.append(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
    # C-contiguous: the transposed HWC arrays would otherwise reach the convolutions as a
    # channels-last tensor, and torch 2.13's CPU (oneDNN) kernels corrupted the heap on that
    # layout in backward (glibc "corrupted size vs. prev_size" within a few steps)
    return np.ascontiguousarray(np.stack(out))


# ----------------------------------------------------------------------------------- splits
class ClipSet(torch.utils.data.Dataset):
    """Map-style dataset whose item is a whole batch ``[(index, seed)]``, so DataLoader workers
    decode batches in parallel while the order and augmentation stay fixed by the caller's seeds."""

    def __init__(self, clips: list[Clip], spec: AVSettings, train: bool):
        self.clips, self.spec, self.train = clips, spec, train

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, items: list[tuple[int, int]]):
        audio, frames = [], []
        for i, seed in items:
            clip = self.clips[i]
            rng = np.random.default_rng(seed) if self.train else None
            wave = fit_length(read_wav(clip.wav, self.spec.sample_rate), self.spec.samples, rng)
            audio.append(log_spectrogram(torch.from_numpy(wave), n_fft=self.spec.n_fft, hop=self.spec.hop))
            frames.append(torch.from_numpy(load_frames(clip.frames, self.spec, rng)))
        return torch.stack(audio), torch.stack(frames), [i for i, _ in items]


class AVSplit:
    """A split decoded on demand; the same interface as ``Split`` (``y``, ``ids``, ``batch``,
    ``batches``) so the one training loop and every strategy run unchanged."""

    def __init__(self, clips: list[Clip], spec: AVSettings, *, train: bool, num_workers: int = 0):
        self.clips, self.spec, self.train, self.num_workers = clips, spec, train, num_workers
        self.set = ClipSet(clips, spec, train)
        self.y = torch.tensor([c.label for c in clips], dtype=torch.long)
        self.ids = [c.id for c in clips]

    def __len__(self) -> int:
        return len(self.clips)

    def _to_batch(self, audio, frames, index) -> Batch:
        ones = torch.ones(len(index), 1, dtype=torch.bool)
        return Batch({"audio": audio, "visual": frames}, {"audio": ones, "visual": ones.clone()},
                     self.y[index], [self.ids[i] for i in index], torch.as_tensor(index))

    def batch(self, index: torch.Tensor, seed: int = 0) -> Batch:
        return self._to_batch(*self.set[[(i, seed + i) for i in index.tolist()]])

    def _min_size(self, min_size: int) -> int:
        # BatchNorm cannot train on one clip (its pooled maps have one value per channel), so a
        # trailing single training clip joins the previous batch rather than being dropped
        return max(min_size, 2) if self.train else min_size

    def n_batches(self, batch_size: int, min_size: int = 1) -> int:
        return len(batch_bounds(len(self), batch_size, self._min_size(min_size)))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                min_size: int = 1):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        # One seed per epoch from the caller's generator: augmentation is reproducible and resumes
        # with the generator state saved in last.pt.
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if self.train and generator is not None else 0
        chunks = [[(i, base + i) for i in order[s:e].tolist()]
                  for s, e in batch_bounds(len(self), batch_size, self._min_size(min_size))]
        loader = torch.utils.data.DataLoader(self.set, batch_size=None, sampler=chunks, num_workers=self.num_workers,
                                             persistent_workers=False, pin_memory=torch.cuda.is_available())
        for audio, frames, index in loader:
            yield self._to_batch(audio, frames, index)


def walk(root: Path) -> list[Path]:
    """Every path below ``root``, sorted, following symlinked folders (a corpus assembled from links
    is common on shared machines) but never the same real folder twice (no link cycles)."""
    import os

    out, seen = [], set()
    for here, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        out += [Path(here) / n for n in dirs + names]
    return sorted(out)


def scan(dataset: str, root: Path) -> tuple[list[Clip], list[str]]:
    """Every clip of the split file with its media, checked: unknown labels, missing or corrupt
    WAVs and empty frame folders are errors naming the clip and file."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a {dataset} corpus folder)")
    files = walk(root)  # one walk serves the split file, classes.txt and the media index
    rows, split_file = read_split_file(root, files)
    if not rows:
        raise DataError(f"{split_file}: no clips listed")
    classes = class_names(dataset, files, [r[1] for r in rows])
    ids = {c: i for i, c in enumerate(classes)}
    media = index_media(files)
    clips, seen = [], {}
    for clip, label, split in rows:
        if clip in seen:  # a clip twice (or in train and test) would leak or double-count
            raise DataError(f"{split_file}: clip {clip!r} is listed twice ({seen[clip]} and {split})")
        seen[clip] = split
        key = label.replace(" ", "_")
        if key not in ids:
            raise DataError(f"{split_file}: clip {clip!r} has unknown class label {label!r}; "
                            f"classes: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}")
        clips.append(Clip(clip, ids[key], split, media["wav"].get(clip), media["frames"].get(clip),
                          media["video"].get(clip)))
    return clips, classes


def is_av_folder(path: Path) -> bool:
    """A folder holding a split file at its top, or media in <split>/<class>/ folders."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return bool(names & {"splits.csv", "vggsound.csv"}) or {"train.csv", "test.csv"} <= names or (
        "train" in names and "test" in names)


def load_av(cfg, seed: int = 0) -> Dataset:
    """A ``Dataset`` of ``AVSplit``s for a prepared corpus folder (``cfg`` is a ``DataConfig``)."""
    if not cfg.path:
        raise DataError(f"{cfg.dataset}: pass --data DIR (a corpus folder in its usual layout, or the output of "
                        f"`python cli.py data prepare {cfg.dataset} --src RAW --out DIR`)")
    root = Path(cfg.path)
    clips, classes = scan(cfg.dataset, root)
    for c in clips:
        if c.wav is None or c.frames is None:
            what = "WAV" if c.wav is None else "frames folder"
            hint = (f"; it has a video: run python cli.py data prepare {cfg.dataset} --src {root} --out DIR"
                    if c.video is not None else "")
            raise DataError(f"{root}: clip {c.id!r} has no {what}{hint}")
        check_wav(c.wav)
        if not frame_files(c.frames):
            raise DataError(f"{c.frames}: clip {c.id!r} has no .jpg frames")
    spec = cfg.settings
    train = sorted((c for c in clips if c.split == "train"), key=lambda c: c.id)
    test = [c for c in clips if c.split == "test"]
    if not train or not test:
        raise DataError(f"{root}: the split file needs train and test clips (got {len(train)} train, {len(test)} test)")
    k = max(2, round(1 / spec.valid_fraction))
    if len(train) < k:
        raise DataError(f"{root}: data.valid_fraction={spec.valid_fraction} leaves no validation clip "
                        f"among {len(train)} train clips")
    val = train[k - 1::k]
    held = {c.id for c in val}
    train = [c for c in train if c.id not in held]
    w = spec.num_workers
    return Dataset(
        train=AVSplit(train, spec, train=True, num_workers=w),
        val=AVSplit(val, spec, train=False, num_workers=w),
        test=AVSplit(test, spec, train=False, num_workers=w),
        task="classification", num_classes=len(classes), dims={"audio": 1, "visual": 3},
        kinds={"audio": "spectrogram", "visual": "frames"},
    )
