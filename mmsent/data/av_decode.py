"""Decoding one clip: the WAV resampled and cut to length, its log-spectrogram, its frames chosen,
cropped and normalised; ``AVSettings`` holds the ``data.*`` keys all of this reads."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmsent.checks import check, finite, first_line
from mmsent.data.batch import Batch, DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


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
    cache: str = ""  # a folder of decoded inputs (mmsent/data/av_cache.py), built there on first use; "" = decode per batch
    cache_size: int = 0  # side of the cached frames (0: image_size); larger keeps training crops sharp
    # where the STFT (and, from a cache, the crop and normalisation) runs: "device" after the batch
    # moves there, "loader" in the loader's workers, "auto" on the device when CUDA is available
    finish: str = "auto"

    def __post_init__(self):
        check("cache_size", self.cache_size >= 0, self.cache_size, ">= 0")
        for key in ("sample_rate", "audio_frames", "n_fft", "hop", "frames", "fps", "image_size"):
            check(key, getattr(self, key) >= 1, getattr(self, key), ">= 1")
        check("valid_fraction", finite(self.valid_fraction) and 0 < self.valid_fraction < 1, self.valid_fraction,
              "in (0, 1)")
        check("num_workers", self.num_workers >= 0, self.num_workers, ">= 0")
        # upper bounds where a typo would be a resample to gigabytes (384 kHz is the highest studio
        # rate; 240 frames/s the fastest common camera), not a refusal of anything real
        check("sample_rate", self.sample_rate <= 384_000, self.sample_rate, "<= 384000")
        check("fps", self.fps <= 240, self.fps, "<= 240")
        check("finish", self.finish in ("auto", "device", "loader"), self.finish, "auto, device or loader")

    @property
    def samples(self) -> int:
        return (self.audio_frames - 1) * self.hop  # centred STFT: 1 + samples // hop frames


def log_spectrogram(wave: Tensor, *, n_fft: int = 512, hop: int = 353, eps: float = 1e-7) -> Tensor:
    """``log(|STFT| + eps)`` with a periodic Hann window of ``n_fft`` and reflect padding (librosa's
    defaults): (..., samples) -> (..., n_fft // 2 + 1, frames). The paper's CREMA-D input is 257 x 299."""
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    return torch.log(spec.abs() + eps).contiguous()  # stft's (freq, frame) strides are time-major


def resize_weights(lo: Tensor, hi: Tensor, n_in: int, n_out: int) -> Tensor:
    """(N, n_out, n_in): row i averages the input pixels PIL's bilinear resize of the span
    [lo, hi) to ``n_out`` pixels reads for output pixel i (``Image.resize(box=...)``): a triangle
    of half-width max(1, scale) around ``lo + (i + 0.5) * scale``, cut to the image and normalised.
    Resizing is then two batched matrix products, on whatever device the frames are."""
    scale = (hi - lo) / n_out
    width = scale.clamp(min=1.0)[:, None, None]
    centre = lo[:, None] + (torch.arange(n_out, dtype=lo.dtype, device=lo.device) + 0.5) * scale[:, None]
    pixel = torch.arange(n_in, dtype=lo.dtype, device=lo.device) + 0.5
    w = (1 - ((pixel - centre[..., None]) / width).abs()).clamp(min=0)
    return w / w.sum(-1, keepdim=True)


def crop_frames(frames: Tensor, box: Tensor | None, flip: Tensor | None, size: int) -> Tensor:
    """uint8 frames (N, S, S, 3) -> normalised (N, 3, size, size) float: each cut to its ``box``
    (left, top, right, bottom) and resized as PIL's bilinear resize does (``resize_weights``; within
    one grey level of PIL, which rounds to uint8 between its passes), mirrored where ``flip``, then
    ImageNet's normalisation. ``box`` None: the whole frame, no flip (evaluation); at S == size the
    frames are only normalised, exactly as the decoding path normalises its resized JPGs."""
    x = frames.permute(0, 3, 1, 2).float()  # (N, 3, S, S)
    s = frames.shape[1]
    if box is not None or s != size:
        n = len(frames)
        box = box.to(x.dtype) if box is not None else x.new_tensor([0, 0, s, s]).expand(n, 4)
        wx = resize_weights(box[:, 0], box[:, 2], s, size)
        wy = resize_weights(box[:, 1], box[:, 3], s, size)
        if flip is not None:
            wx = torch.where(flip[:, None, None], wx.flip(1), wx)
        x = wy[:, None] @ x @ wx[:, None].transpose(-1, -2)
    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=x.device)[:, None, None]
    return x.div_(255.0).sub_(mean).div_(std).contiguous()


@dataclass(frozen=True)
class AVFinish:
    """What a loader may leave for the device (``Batch.finish``): the waveforms' log-spectrogram
    and, for uint8 frames from the cache, their crop, flip and normalisation (``later``: ``box``
    and ``flip`` per frame, drawn in the loader from the clips' seeds)."""

    n_fft: int
    hop: int
    image_size: int

    def __call__(self, batch: Batch) -> Batch:
        x = dict(batch.x)
        # float32 whatever the caller's autocast says: the training loop moves batches inside its
        # bfloat16 region, which would run the resize's matrix products with 8-bit mantissas
        with torch.autocast(x["audio"].device.type, enabled=False):
            x["audio"] = log_spectrogram(x["audio"], n_fft=self.n_fft, hop=self.hop)
            if x["visual"].dtype == torch.uint8:  # (B, T, S, S, 3) -> (B, T, 3, size, size)
                v = x["visual"]
                b, t = v.shape[:2]
                box, flip = batch.later.get("box"), batch.later.get("flip")
                x["visual"] = crop_frames(v.flatten(0, 1), box.flatten(0, 1) if box is not None else None,
                                          flip.flatten(0, 1) if flip is not None else None,
                                          self.image_size).view(b, t, 3, self.image_size, self.image_size)
        return Batch(x, batch.mask, batch.y, batch.ids, batch.index)


# ----------------------------------------------------------------------------------- split files


# The sample rates a WAV header may claim: 1 kHz .. 768 kHz (a header of 0 Hz divided by zero; one of
# 2**31 Hz asked for a 320 GiB resampling filter)
RATES = (1000, 768000)


def _check_rate(path: Path, rate: int) -> None:
    if not RATES[0] <= rate <= RATES[1]:
        raise DataError(f"{path}: WAV header claims a sample rate of {rate} Hz (expected {RATES[0]}..{RATES[1]}); "
                        "the file is damaged")


def _wav(path: Path, mmap: bool):
    """``(rate, samples)`` of a WAV; a 24-bit file (which scipy cannot memory-map) is read whole."""
    from scipy.io import wavfile

    try:
        return wavfile.read(path, mmap=mmap)
    except ValueError as e:
        if mmap and ("24-bit" in str(e) or "3-byte" in str(e)):
            return _wav(path, False)
        raise DataError(f"{path}: not a readable WAV file ({e})") from None
    except (OSError, EOFError, MemoryError, ZeroDivisionError, IndexError, OverflowError) as e:
        # a header field of 0 (channels, block alignment) divides by zero inside scipy
        raise DataError(f"{path}: not a readable WAV file ({type(e).__name__}: {first_line(e)})") from None


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1] at ``sample_rate`` (polyphase resampling, scipy)."""
    from scipy.signal import resample_poly

    rate, data = _wav(path, False)
    _check_rate(path, rate)
    if data.size == 0:
        raise DataError(f"{path}: WAV file holds no samples")
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(1)
    if not np.isfinite(data).all():  # a float WAV holding NaN: the file's fault, said as such
        raise DataError(f"{path}: WAV samples hold NaN or infinite values")
    if rate != sample_rate:  # a bounded filter: a ratio of two coprime rates is kept within 1/1000
        r = Fraction(sample_rate, rate).limit_denominator(1000)
        data = resample_poly(data, r.numerator, r.denominator).astype(np.float32)
    return np.clip(data, -1.0, 1.0)


def check_wav(path: Path) -> None:
    """Header check at load time, so a corrupt file fails before training starts, naming it (a
    float WAV's samples are read too: NaN in one would otherwise stop a run mid-epoch)."""
    rate, data = _wav(path, True)
    _check_rate(path, rate)
    if data.size == 0:
        raise DataError(f"{path}: WAV file holds no samples")
    if data.dtype.kind == "f" and not np.isfinite(data).all():  # float WAVs only: integer PCM is always finite
        raise DataError(f"{path}: WAV samples hold NaN or infinite values")


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


def check_frames(folder: Path) -> None:
    """Every frame of a clip readable, checked before the first epoch (a damaged test frame used to
    surface only after training). A JPEG begins FF D8 FF and ends FF D9: two small reads a file. A
    file that does not (cut short, another format under .jpg, bytes after the end marker) is decoded
    in full, and only one that PIL cannot decode is refused, naming it."""
    from PIL import Image, UnidentifiedImageError

    files = frame_files(folder)
    if not files:
        raise DataError(f"{folder}: no .jpg frames")
    for path in files:
        try:
            with open(path, "rb") as f:
                head = f.read(3)
                f.seek(max(0, f.seek(0, 2) - 2))
                tail = f.read(2)
            if head == b"\xff\xd8\xff" and tail == b"\xff\xd9":
                continue
            with Image.open(path) as im:
                im.load()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: not a readable image ({first_line(e)})") from None


def chosen_frames(n: int, frames: int, rng: np.random.Generator | None) -> list[int]:
    """Which of a clip's ``n`` sorted frames to use: one per equal segment, at random within it
    when training (``rng``), its centre otherwise."""
    step = n / frames  # np.linspace(0, n, frames + 1)'s values, without its cost per clip
    bounds = [t * step for t in range(frames)] + [n]
    out = []
    for t in range(frames):
        lo, hi = int(bounds[t]), max(int(bounds[t]) + 1, int(math.ceil(bounds[t + 1])))
        out.append(min(int(rng.integers(lo, hi)) if rng else (lo + hi - 1) // 2, n - 1))
    return out


def load_frames(folder: Path, spec: AVSettings, rng: np.random.Generator | None) -> np.ndarray:
    """(T, 3, S, S) float32: one frame per equal segment of the clip's sorted frames."""
    from PIL import Image, UnidentifiedImageError

    files = frame_files(folder)
    if not files:
        raise DataError(f"{folder}: no .jpg frames")
    out = []
    for i in chosen_frames(len(files), spec.frames, rng):
        path = files[i]
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
