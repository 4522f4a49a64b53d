"""A cache of decoded audio-visual inputs: each clip's waveform resampled to ``data.sample_rate``
and each of its frames decoded and resized to ``data.cache_size`` (0: ``data.image_size``), held in
two memory-mapped arrays, so a batch costs a slice, an STFT and a crop instead of a WAV decode, a
resampling and JPG decodes per clip; with ``data.finish=device`` the batch reaches the device as
waveforms and uint8 frames whose STFT, crop and normalisation run there (``AVFinish``;
``benchmarks/input_pipeline.py`` measures the difference).

Layout of a cache folder: ``audio.npy`` (float32, every clip's samples end to end), ``frames.npy``
(uint8, (frames, S, S, 3)), and ``index.json`` (the fingerprint, and per clip its id and where its
samples and frames are). The fingerprint holds the decoding settings and a digest of the corpus
(clip ids, splits, labels, file names and sizes): a cache made with other settings or for other
files is never read, and the run says why (``find``). What is random per epoch when training
stays random: the waveform's window (``fit_length``), the frame chosen in each segment, the random
resized crop and the flip, all drawn from the batch's seeds as the decoding path draws them; the
crop is taken on the cached S x S image (the original squashed to a square, as the decoding path's
evaluation resize does) with PIL's bilinear weights (``crop_frames``), so ``data.cache_size`` above
``data.image_size`` keeps crops sharp.
Evaluation batches equal the decoding path's when S = ``data.image_size``
(``tests/test_av_cache.py``).

Building is atomic and resumable: everything is written under ``<folder>.part``, clip by clip,
with a record of the clips done; an interrupted build continues there, and the folder appears
under its name only when complete.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mmsent.data.av_decode import AVSettings, chosen_frames, fit_length, frame_files, random_resized_crop, read_wav
from mmsent.data.batch import DataError
from mmsent.files import make_dir, write_failed, write_text

VERSION = 1


def cache_size(spec: AVSettings) -> int:
    return spec.cache_size or spec.image_size


def _resampled_length(path: Path, sample_rate: int) -> int:
    from mmsent.data.av_decode import _check_rate, _wav

    rate, data = _wav(path, True)
    _check_rate(path, rate)
    if rate == sample_rate:
        return len(data)
    r = Fraction(sample_rate, rate).limit_denominator(1000)  # read_wav's ratio
    return -(-len(data) * r.numerator // r.denominator)  # scipy's resample_poly: ceil(n * up / down)


def fingerprint(dataset: str, clips, spec: AVSettings) -> dict:
    """What a cache's contents depend on: the decoding settings and the corpus's files."""
    h = hashlib.sha256()
    for c in sorted(clips, key=lambda c: c.id):
        files = frame_files(c.frames)
        h.update(f"{c.id}|{c.split}|{c.label}|{c.wav.stat().st_size}|".encode())
        h.update("|".join(f"{f.name}:{f.stat().st_size}" for f in files).encode())
    return {"version": VERSION, "dataset": dataset, "sample_rate": spec.sample_rate, "cache_size": cache_size(spec),
            "clips": len(clips), "corpus": h.hexdigest()[:16]}


def _differences(have: dict, want: dict) -> str:
    names = {"sample_rate": "data.sample_rate", "cache_size": "data.cache_size (or data.image_size)",
             "corpus": "the corpus's files", "clips": "the number of clips", "version": "the cache format",
             "dataset": "the dataset"}
    diff = [k for k in want if have.get(k) != want[k]]
    return "; ".join(f"{names.get(k, k)}: {have.get(k)!r} there, {want[k]!r} here" for k in diff)


def refuse_foreign(folder: Path, named_by: str) -> None:
    """One line when ``folder`` holds files but no cache: building there would mix the cache with
    (or, replacing a stale cache, delete) a user's files; or when it is a file or a link."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise DataError(f"{folder}: {named_by} names a {'link' if folder.is_symlink() else 'file'}, not a cache folder; "
                        "pass an empty or new folder")
    if folder.exists() and not (folder / "index.json").is_file() and any(folder.iterdir()):
        raise DataError(f"{folder}: {named_by} names a folder that is not a cache (no index.json); pass an empty "
                        "or new folder")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _reserve(path: Path) -> None:
    """Give a memory-mapped file its disk blocks now (``posix_fallocate``): a full disk is then an
    ``ENOSPC`` here, not a Bus error on some later page. Filesystems without it skip the reservation."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    except AttributeError:  # not on this platform
        pass
    finally:
        os.close(fd)


def build(dataset: str, clips, spec: AVSettings, out: Path, progress=None, want: dict | None = None) -> Path:
    """Decode every clip into a cache at ``out`` (see the module's doc); returns ``out``. ``want``:
    the corpus's ``fingerprint`` when the caller has it (it stats every file)."""
    out = Path(out)
    want = want or fingerprint(dataset, clips, spec)
    part = out.with_name(out.name + ".part")
    started = part / "started.json"
    if part.is_dir() and (not started.is_file() or json.loads(started.read_text()) != want):
        shutil.rmtree(part)  # our own unfinished build, for other settings: start again
    order = sorted(clips, key=lambda c: c.id)
    lengths = [_resampled_length(c.wav, spec.sample_rate) for c in order]
    files = [frame_files(c.frames) for c in order]
    counts = [len(f) for f in files]
    s = cache_size(spec)
    fresh = not (part / "audio.npy").is_file()
    if fresh:  # the whole cache's size is known now: refuse before writing a byte if it cannot fit
        need = 4 * sum(lengths) + sum(counts) * s * s * 3 + len(order)
        free = _free_bytes(part.parent if part.parent.is_dir() else Path.cwd())
        if free is not None and need > free:
            raise DataError(f"{out}: the cache needs {need / 2**30:.2f} GiB and its filesystem has "
                            f"{free / 2**30:.2f} GiB free; free some space or choose another folder")
    make_dir(part)
    if not started.is_file():
        write_text(started, json.dumps(want))
    shapes = {"audio": (np.float32, (sum(lengths),)), "frames": (np.uint8, (sum(counts), s, s, 3)),
              "done": (np.bool_, (len(order),))}
    maps = {}
    try:
        for name, (dtype, shape) in shapes.items():
            maps[name] = np.lib.format.open_memmap(part / f"{name}.npy", mode="w+" if fresh else "r+", dtype=dtype,
                                                   shape=shape)
            if fresh:  # a memory map over a sparse file: a page written when the disk is full is a SIGBUS
                _reserve(part / f"{name}.npy")
    except OSError as e:
        if fresh:  # ours, and nothing decoded yet: leave nothing behind to fill the disk
            maps.clear()
            shutil.rmtree(part, ignore_errors=True)
        raise write_failed(part, e) from None
    audio, frames, done = maps["audio"], maps["frames"], maps["done"]
    maps.clear()
    try:
        return _fill(part, out, order, lengths, files, counts, s, spec, want, audio, frames, done, progress)
    except DataError:
        if fresh:  # a file that fails to decode: what this call began is not worth resuming
            del audio, frames, done
            shutil.rmtree(part, ignore_errors=True)
        raise


def _fill(part, out, order, lengths, files, counts, s, spec, want, audio, frames, done, progress) -> Path:
    from PIL import Image, UnidentifiedImageError

    a_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    f_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    for i, c in enumerate(order):
        if not done[i]:
            wave = read_wav(c.wav, spec.sample_rate)
            if len(wave) != lengths[i]:
                raise DataError(f"{c.wav}: {len(wave)} samples after resampling, {lengths[i]} expected")
            audio[a_off[i]:a_off[i + 1]] = wave
            for k, path in enumerate(files[i]):
                try:
                    with Image.open(path) as im:
                        frames[f_off[i] + k] = np.asarray(im.convert("RGB").resize((s, s), Image.BILINEAR))
                except (OSError, UnidentifiedImageError) as e:
                    raise DataError(f"{path}: not a readable image ({e})") from None
            if i % 64 == 63 or i == len(order) - 1:
                audio.flush()
                frames.flush()
            done[i] = True
            if i % 64 == 63:
                done.flush()
        if progress:
            progress(i + 1, len(order))
    for array in (audio, frames, done):
        array.flush()
    index = {"fingerprint": want, "ids": [c.id for c in order], "audio": a_off.tolist(), "frames": f_off.tolist()}
    write_text(part / "index.json", json.dumps(index))
    del audio, frames, done
    try:
        if out.exists():
            shutil.rmtree(out)  # a stale cache the caller chose to replace
        os.replace(part, out)
    except OSError as e:
        raise write_failed(out, e) from None
    return out


class Cache:
    """An opened cache: clip id -> its samples and frames (memory-mapped, read on demand)."""

    def __init__(self, folder: Path):
        from mmsent.files import FileError, read_json

        self.folder = Path(folder)
        fix = "; remove the folder (or name another data.cache) to build it again"
        try:  # the cache's schema: an index of ids and offsets, and the two arrays those offsets cut
            index = read_json(self.folder / "index.json", "cache index", fix)
        except FileError as e:
            raise DataError(str(e)) from None
        ok = (isinstance(index.get("fingerprint"), dict) and isinstance(index.get("ids"), list)
              and all(isinstance(i, str) for i in index["ids"])
              and all(isinstance(index.get(k), list) and len(index[k]) == len(index["ids"]) + 1
                      and all(isinstance(o, int) and not isinstance(o, bool) for o in index[k])
                      and index[k] == sorted(index[k]) and index[k][0] == 0 for k in ("audio", "frames")))
        if not ok:
            raise DataError(f"{self.folder / 'index.json'}: not the index of an mmsent cache (fingerprint, ids and "
                            f"sorted offsets){fix}")
        for name, key in (("audio.npy", "audio"), ("frames.npy", "frames")):
            try:
                rows = np.load(self.folder / name, mmap_mode="r").shape[0]
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f"{self.folder / name}: missing or damaged ({type(e).__name__}){fix}") from None
            if rows != index[key][-1]:
                raise DataError(f"{self.folder / name}: holds {rows} rows, its index {index[key][-1]}{fix}")
        self.fingerprint = index["fingerprint"]
        self.row = {cid: i for i, cid in enumerate(index["ids"])}
        self.a_off, self.f_off = index["audio"], index["frames"]
        self._audio = self._frames = None

    def __getstate__(self):  # worker processes map the files themselves
        return {**self.__dict__, "_audio": None, "_frames": None}

    def _open(self) -> None:
        if self._audio is None:  # plain views of the maps: slicing np.memmap itself costs a Python call per slice
            self._audio = np.load(self.folder / "audio.npy", mmap_mode="r").view(np.ndarray)
            self._frames = np.load(self.folder / "frames.npy", mmap_mode="r").view(np.ndarray)

    def wave(self, cid: str) -> np.ndarray:
        """A read-only view of the clip's samples (the batch's ``np.stack`` copies the window it takes)."""
        self._open()
        i = self.row[cid]
        return self._audio[self.a_off[i]:self.a_off[i + 1]]

    def frames(self, cid: str) -> np.ndarray:
        self._open()
        i = self.row[cid]
        return self._frames[self.f_off[i]:self.f_off[i + 1]]


def find(dataset: str, clips, spec: AVSettings) -> tuple[Cache | None, bool]:
    """(the cache ``data.cache`` names, whether it must be built first). Reads only: ``(None, True)``
    when the folder is not there yet (``build_for`` makes it), ``(None, False)`` with a note on
    stderr when it holds a cache for other settings or files."""
    folder = Path(spec.cache)
    refuse_foreign(folder, "data.cache")
    if not (folder / "index.json").is_file():
        return None, True
    cache, want = Cache(folder), fingerprint(dataset, clips, spec)
    if cache.fingerprint != want:
        print(f"note: data.cache {folder} was made for other inputs ({_differences(cache.fingerprint, want)}); "
              "decoding from the files instead (remove the folder, or name another, to cache these)", file=sys.stderr)
        return None, False
    return cache, False


def build_for(dataset: str, clips, spec: AVSettings, progress=None) -> Cache:
    """Build the cache ``data.cache`` names (the first use of a new folder) and open it."""
    folder = Path(spec.cache)
    build(dataset, clips, spec, folder, progress, fingerprint(dataset, clips, spec))
    return Cache(folder)


def cached_batch(cache: Cache, clips, spec: AVSettings, items, train: bool):
    """The loader's part of a batch from the cache: each clip's waveform window (B, samples), its
    chosen frames as stored (B, T, S, S, 3) uint8, and when training each frame's crop box (B, T, 4)
    and flip (B, T), all drawn from the clip's seed as the decoding path draws them; the STFT, the
    crop and the normalisation are ``AVFinish``'s (on the device, or here)."""
    waves, frames, boxes, flips = [], [], [], []
    for i, seed in items:
        clip = clips[i]
        rng = np.random.default_rng(seed) if train else None
        waves.append(fit_length(cache.wave(clip.id), spec.samples, rng))
        stored = cache.frames(clip.id)
        s = stored.shape[1]
        for k in chosen_frames(len(stored), spec.frames, rng):
            frames.append(stored[k])
            if rng is not None:
                boxes.append(random_resized_crop(s, s, rng))
                flips.append(rng.random() < 0.5)
    shape = (len(items), spec.frames)
    x = torch.from_numpy(np.stack(frames)).view(*shape, *frames[0].shape)
    box = torch.tensor(boxes, dtype=torch.int64).view(*shape, 4) if train else None
    flip = torch.tensor(flips, dtype=torch.bool).view(shape) if train else None
    return torch.from_numpy(np.stack(waves)), x, box, flip
