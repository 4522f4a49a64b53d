"""Audio-visual corpora (CREMA-D, Kinetics-Sounds, VGGSound) read from their usual on-disk layout:
the datasets (``ClipSet``, ``AVSplit``, ``load_av``); the corpus scan is ``av_corpus``, the decoding
of a clip ``av_decode``.

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
training, resize otherwise, ImageNet normalisation. The STFT (and a cache's crop and normalisation)
can be left for the device the batch moves to (``data.finish``, ``Batch.finish``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmsent.checks import command
from mmsent.data import av_cache
from mmsent.data.av_cache import cached_batch
from mmsent.data.av_corpus import Clip, scan
from mmsent.data.av_decode import AVFinish, AVSettings, check_frames, check_wav, fit_length, frame_files, load_frames, read_wav
from mmsent.data.batch import Batch, DataError, Dataset, DecodedSplit, Deferred, carve_validation


class ClipSet(torch.utils.data.Dataset):
    """Map-style dataset whose item ``(leave, [(index, seed)])`` is a whole ``Batch``, so DataLoader
    workers decode batches in parallel while the order and augmentation stay fixed by the caller's
    seeds. The audio is handed over as waveforms (and cached frames as uint8 with their crop boxes)
    with ``AVFinish`` as the work left: done here unless ``leave``, then on the device."""

    def __init__(self, clips: list[Clip], spec: AVSettings, train: bool, cache=None):
        self.clips, self.spec, self.train, self.cache = clips, spec, train, cache
        self.y = torch.tensor([c.label for c in clips], dtype=torch.long)
        self.ids = [c.id for c in clips]
        self.finish = AVFinish(spec.n_fft, spec.hop, spec.image_size)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[bool, list[tuple[int, int]]]) -> Batch:
        leave, items = key
        later = {}
        if self.cache is not None:  # the same batch from decoded arrays (av_cache.py)
            audio, frames, box, flip = cached_batch(self.cache, self.clips, self.spec, items, self.train)
            later = {"box": box, "flip": flip} if box is not None else {}
        else:
            waves, decoded = [], []
            for i, seed in items:
                clip = self.clips[i]
                rng = np.random.default_rng(seed) if self.train else None
                waves.append(fit_length(read_wav(clip.wav, self.spec.sample_rate), self.spec.samples, rng))
                decoded.append(torch.from_numpy(load_frames(clip.frames, self.spec, rng)))
            audio, frames = torch.from_numpy(np.stack(waves)), torch.stack(decoded)
        index = [i for i, _ in items]
        batch = Batch.whole({"audio": audio, "visual": frames}, self.y[index], [self.ids[i] for i in index], index,
                            later, self.finish)
        return batch if leave else batch.ready()


class AVSplit(DecodedSplit):
    """An audio-visual split decoded on demand (``DecodedSplit``)."""

    def __init__(self, clips: list[Clip], spec: AVSettings, *, train: bool, num_workers: int = 0, cache=None):
        self.clips, self.spec, self.train, self.num_workers = clips, spec, train, num_workers
        self.set = ClipSet(clips, spec, train, cache)
        self.y, self.ids = self.set.y, self.set.ids
        self.defer = {"auto": None, "device": True, "loader": False}[spec.finish]


def checked_clips(dataset: str, root: Path) -> tuple[list[Clip], list[str]]:
    """The corpus's clips and classes, every clip with a readable WAV header and frames (checked
    now, so a bad file fails before training or caching starts, naming it)."""
    clips, classes = scan(dataset, root)
    for c in clips:
        if c.wav is None or c.frames is None:
            what = "WAV" if c.wav is None else "frames folder"
            hint = (f"; it has a video: run {command()} data prepare {dataset} src={root} out=DIR"
                    if c.video is not None else "")
            raise DataError(f"{root}: clip {c.id!r} has no {what}{hint}")
        check_wav(c.wav)
        if not frame_files(c.frames):
            raise DataError(f"{c.frames}: clip {c.id!r} has no .jpg frames")
        check_frames(c.frames)
    return clips, classes


def load_av(cfg, seed: int = 0) -> Dataset:
    """A ``Dataset`` of ``AVSplit``s for a prepared corpus folder (``cfg`` is a ``DataConfig``)."""
    if not cfg.path:
        raise DataError(f"{cfg.dataset}: pass --data DIR (a corpus folder in its usual layout, or the output of "
                        f"`{command()} data prepare {cfg.dataset} src=RAW out=DIR`)")
    root = Path(cfg.path)
    clips, classes = checked_clips(cfg.dataset, root)
    spec = cfg.settings
    train = sorted((c for c in clips if c.split == "train"), key=lambda c: c.id)
    test = [c for c in clips if c.split == "test"]
    if not train or not test:
        raise DataError(f"{root}: the split file needs train and test clips (got {len(train)} train, {len(test)} test)")
    train, val = carve_validation(train, spec.valid_fraction, root, "clip")
    w = spec.num_workers
    cache, missing = av_cache.find(cfg.dataset, clips, spec) if spec.cache else (None, False)
    ds = Dataset(
        train=AVSplit(train, spec, train=True, num_workers=w, cache=cache),
        val=AVSplit(val, spec, train=False, num_workers=w, cache=cache),
        test=AVSplit(test, spec, train=False, num_workers=w, cache=cache),
        task="classification", num_classes=len(classes), dims={"audio": 1, "visual": 3},
        kinds={"audio": "spectrogram", "visual": "frames"},
    )
    if missing:  # built on first use, by whoever may write (a dry run only says so)
        def build() -> None:
            built = av_cache.build_for(cfg.dataset, clips, spec)
            for split in (ds.train, ds.val, ds.test):
                split.set.cache = built

        ds.deferred.append(Deferred(f"build the cache data.cache={spec.cache} ({len(clips)} clips)", build))
    return ds
