"""NYU Depth V2 (Silberman et al., ECCV 2012), 40-class RGB-D semantic segmentation: the DGL
paper's dense-prediction experiment (Table 5, with ESANet). 1,449 labelled frames, the standard
795 / 654 train / test split, the 894 raw classes mapped to Gupta et al.'s 40 (0 = void).

Two sources, one reader each, both giving a frame as (RGB uint8, depth in metres with 0 = no
reading, 40-class labels uint8 with 0 = void):

* the prepared layout ESANet and most repositories use (``cli.py data prepare nyuv2`` writes it):
  ``<root>/{train,test}/{rgb,depth,depth_raw,labels_40}/NNNN.png`` with depth as uint16 millimetres
  and ``train.txt`` / ``test.txt`` listing the ids (NNNN = the frame's 1-based index in the
  labelled file, the numbering of NYUv2's own split file);
* the labelled file ``nyu_depth_v2_labeled.mat`` itself (MATLAB v7.3 = HDF5, read with h5py; its
  arrays are stored transposed), with ``splits.mat`` and ``classMapping40.mat`` beside it or named
  by ``data.splits`` / ``data.mapping``.

Validation is carved from train (every k-th train frame by id, ``data.valid_fraction``): the
standard protocol has none, and model selection never sees the test frames. Training frames are
augmented as ESANet does: random rescale by 1.0-1.4 and a random crop back to size, horizontal
flip, HSV jitter (hue x0.9-1.1, saturation x0.9-1.1, value +-25/255). RGB is normalised with
ImageNet's statistics, depth with the mean and deviation of the valid train readings, and a
missing reading stays 0. Frames are read when a batch asks for them, so the corpus never has to
fit in memory. Evaluation is at ``data.height x data.width`` (480 x 640 is the standard protocol;
a smaller size scores labels resized by nearest neighbour).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmsent.checks import check, command, finite
from mmsent.data.av_decode import IMAGENET_MEAN, IMAGENET_STD
from mmsent.data.batch import Batch, DataError, Dataset, DecodedSplit, carve_validation
from mmsent.data.job import Job, option
from mmsent.files import claim_folder, make_dir, write_bytes, write_text
from mmsent.tasks import VOID, median_frequency_weights

NUM_CLASSES = 40
KINDS = ("rgb", "depth", "depth_raw", "labels_40")  # the prepared layout's folders


@dataclass(frozen=True)
class NYUv2Settings:
    """The ``data.*`` keys of ``nyuv2``."""

    height: int = 480  # the size frames are trained and scored at (NYUv2's own is 480 x 640)
    width: int = 640
    valid_fraction: float = 0.1  # validation carved from the 795 train frames (every k-th by id)
    raw_depth: bool = True  # the unrefined Kinect depth with its holes (ESANet's choice), else the hole-filled one
    augment: bool = True  # ESANet's: rescale 1.0-1.4 + crop, flip, HSV jitter (training frames only)
    class_weighting: str = "median_frequency"  # ESANet's loss weights (from the train labels), or "none"
    splits: str = ""  # reading the .mat directly: its splits.mat (default: beside it)
    mapping: str = ""  # ... and its classMapping40.mat (default: beside it)
    num_workers: int = 0  # DataLoader workers reading frames

    def __post_init__(self):
        for key in ("height", "width"):
            check(key, getattr(self, key) >= 8, getattr(self, key), ">= 8")
        check("valid_fraction", finite(self.valid_fraction) and 0 < self.valid_fraction < 1, self.valid_fraction,
              "in (0, 1)")
        check("class_weighting", self.class_weighting in ("median_frequency", "none"), self.class_weighting,
              "median_frequency or none")
        check("num_workers", self.num_workers >= 0, self.num_workers, ">= 0")


# --- the metadata files (MATLAB v5, read by scipy without running anything) ---------------------------


def _loadmat(path: Path, what: str, keys: tuple[str, ...]) -> dict:
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"{path}: not a readable MATLAB file ({what}): {type(e).__name__}") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{path}: {what} has no {missing[0]!r} (found {', '.join(k for k in mat if not k.startswith('__'))})")
    return mat


def read_splits(path: Path) -> tuple[list[int], list[int]]:
    """The 1-based train and test frame indices of NYUv2's ``splits.mat``."""
    mat = _loadmat(path, "split file", ("trainNdxs", "testNdxs"))
    train, test = (np.asarray(mat[k]).astype(np.int64).ravel().tolist() for k in ("trainNdxs", "testNdxs"))
    if not train or not test or min(train + test) < 1 or set(train) & set(test):
        raise DataError(f"{path}: trainNdxs and testNdxs must be disjoint, non-empty, 1-based frame indices")
    return sorted(train), sorted(test)


def read_mapping(path: Path) -> np.ndarray:
    """A lookup table raw class -> 40-class id (index 0 = void -> 0), from ``classMapping40.mat``."""
    mat = _loadmat(path, "class mapping", ("mapClass",))
    classes = np.asarray(mat["mapClass"]).ravel()
    if classes.size == 0 or not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() > NUM_CLASSES:
        raise DataError(f"{path}: mapClass must map each raw class to 0..{NUM_CLASSES}")
    return np.concatenate([[0], classes]).astype(np.uint8)


# --- frame readers -------------------------------------------------------------------------------------


class LabelledMat:
    """Frames of ``nyu_depth_v2_labeled.mat`` (HDF5). The file is opened in each process that reads
    it (HDF5 handles must not cross a fork or a pickle: DataLoader workers open their own)."""

    ARRAYS = {"images": 4, "depths": 3, "rawDepths": 3, "labels": 3}

    def __init__(self, path: Path, lut: np.ndarray):
        import h5py

        self.path, self.lut, self._file, self._pid = Path(path), lut, None, None
        if not self.path.is_file():
            raise DataError(f"{self.path}: labelled NYUv2 file not found")
        try:
            with h5py.File(self.path, "r") as f:
                shapes = {k: f[k].shape for k in self.ARRAYS if k in f and isinstance(f[k], h5py.Dataset)}
        except OSError:
            raise DataError(f"{self.path}: not a MATLAB v7.3 (HDF5) file; nyu_depth_v2_labeled.mat is one") from None
        for k, dims in self.ARRAYS.items():
            if k not in shapes or len(shapes[k]) != dims:
                raise DataError(f"{self.path}: needs a {dims}-D array {k!r} (NYUv2's labelled file); "
                                f"found {', '.join(f'{n} {s}' for n, s in shapes.items()) or 'none of them'}")
        n, _, w, h = shapes["images"]
        if shapes["images"][1] != 3 or any(shapes[k] != (n, w, h) for k in ("depths", "rawDepths", "labels")):
            raise DataError(f"{self.path}: images {shapes['images']} and depths/rawDepths/labels "
                            f"{shapes['depths']}/{shapes['rawDepths']}/{shapes['labels']} do not describe the same frames")
        self.frames = n

    def __getstate__(self):  # what a worker process receives: no open handle
        return {**self.__dict__, "_file": None}

    def arrays(self, frame: int, names) -> dict[str, np.ndarray]:
        """The arrays ``names`` of a 1-based ``frame``, in image layout (the file stores them transposed)."""
        import h5py

        if self._file is None or self._pid != os.getpid():  # a forked worker opens its own handle
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        out = {k: np.ascontiguousarray(self._file[k][frame - 1].T) for k in names}
        if "labels" in out:
            raw = out["labels"]
            if raw.max(initial=0) >= len(self.lut):
                raise DataError(f"{self.path}: frame {frame} has raw class {int(raw.max())}; the mapping knows "
                                f"{len(self.lut) - 1}")
            out["labels"] = self.lut[raw]
        return out

    def read(self, frame: int, raw_depth: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        depth = "rawDepths" if raw_depth else "depths"
        a = self.arrays(frame, ("images", depth, "labels"))
        return a["images"], a[depth].astype(np.float32), a["labels"]


def open_labelled(mat: Path, splits: Path, mapping: Path) -> tuple[list[int], list[int], LabelledMat]:
    """The split's train and test frames and the labelled file, checked against each other."""
    train, test = read_splits(splits)
    source = LabelledMat(mat, read_mapping(mapping))
    if max(train + test) > source.frames:
        raise DataError(f"{splits}: frame {max(train + test)} is beyond the {source.frames} frames of {mat}")
    return train, test, source


def class_ids(labels_40: torch.Tensor) -> torch.Tensor:
    """labels_40's values (0 = void, 1..40) -> the task's class ids (``VOID``, 0..39)."""
    y = labels_40.long() - 1
    return torch.where(y < 0, torch.full_like(y, VOID), y)


def _png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: missing (the prepared NYUv2 folder is incomplete; run data prepare nyuv2 again)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable PNG ({type(e).__name__})") from None


class PreparedFolder:
    """Frames of the prepared layout (``prepare`` writes it)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ids = {}
        for split in ("train", "test"):
            listing = self.root / f"{split}.txt"
            if not listing.is_file():
                raise DataError(f"{listing}: not found (a prepared NYUv2 folder lists its frames in train.txt and "
                                f"test.txt; write one with {command()} data prepare nyuv2)")
            ids = listing.read_text().split()
            if not ids or not all(i.isdigit() for i in ids):
                raise DataError(f"{listing}: must list frame numbers, one per line")
            self.ids[split] = [int(i) for i in ids]
        self.split_of = {i: s for s, ids in self.ids.items() for i in ids}
        for split, ids in self.ids.items():  # a missing frame is named now, not after hours of training
            for kind in KINDS:
                have = {p.name for p in (self.root / split / kind).glob("*.png")}
                lost = [i for i in ids if f"{i:04d}.png" not in have]
                if lost:
                    raise DataError(f"{self.root / split / kind / f'{lost[0]:04d}.png'}: missing ({len(lost)} of the "
                                    f"{len(ids)} frames {split}.txt lists; run data prepare nyuv2 again)")

    def read(self, frame: int, raw_depth: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.root / self.split_of[frame]
        name = f"{frame:04d}.png"
        rgb, labels = _png(d / "rgb" / name), _png(d / "labels_40" / name)
        depth = _png(d / ("depth_raw" if raw_depth else "depth") / name).astype(np.float32) / 1000.0
        if rgb.ndim != 3 or rgb.shape[2] != 3 or depth.shape != rgb.shape[:2] or labels.shape != rgb.shape[:2]:
            raise DataError(f"{d}: frame {name} has rgb {rgb.shape}, depth {depth.shape}, labels {labels.shape}; "
                            "they must be H x W x 3, H x W, H x W")
        if labels.max(initial=0) > NUM_CLASSES:
            raise DataError(f"{d / 'labels_40' / name}: class {int(labels.max())}; labels_40 holds 0 (void) to 40")
        return rgb, depth, labels


# --- data prepare nyuv2 --------------------------------------------------------------------------------


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def to_millimetres(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (0 stays 0 = no reading; beyond 65.535 m is clipped)."""
    return np.clip(np.rint(depth * 1000.0), 0, 65535).astype(np.uint16)


def prepare_nyuv2(mat: Path, splits: Path, mapping: Path, out: Path, progress=None) -> int:
    """Write the prepared layout of every frame in the split into ``out``; returns the frame count.
    Every input is checked before anything is written; each PNG is written atomically and a frame
    whose four PNGs exist is skipped, so an interrupted run continues where it stopped; the id
    lists come last, so a folder without them is visibly unfinished."""
    train, test, source = open_labelled(Path(mat), Path(splits), Path(mapping))
    claim_folder(Path(out), "prepared-nyuv2", "out", frozenset({"train", "test", "train.txt", "test.txt"}),
                 frozenset({"train", "test"}))
    jobs = [("train", i) for i in train] + [("test", i) for i in test]
    for split in ("train", "test"):
        for kind in KINDS:
            make_dir(Path(out) / split / kind)
    for k, (split, frame) in enumerate(jobs):
        name = f"{frame:04d}.png"
        paths = {kind: Path(out) / split / kind / name for kind in KINDS}
        if not all(p.is_file() for p in paths.values()):
            a = source.arrays(frame, ("images", "depths", "rawDepths", "labels"))
            for kind, array in (("rgb", a["images"]), ("depth", to_millimetres(a["depths"])),
                                ("depth_raw", to_millimetres(a["rawDepths"])), ("labels_40", a["labels"])):
                _save_png(paths[kind], array)
        if progress:
            progress(k + 1, len(jobs))
    for split, ids in (("train", train), ("test", test)):
        write_text(Path(out) / f"{split}.txt", "".join(f"{i:04d}\n" for i in ids))
    return len(jobs)


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    mat: str = option("nyu_depth_v2_labeled.mat (the labelled frames, MATLAB v7.3)", "FILE")
    splits: str = option("splits.mat (trainNdxs / testNdxs)", "FILE")
    mapping: str = option("classMapping40.mat (the 894 raw classes -> 40)", "FILE")
    out: str = option("the prepared folder to write", "DIR")


def prepare(dataset: str, opts: PrepareOptions, settings, progress=None) -> str:
    """``cli.py data prepare nyuv2 mat=FILE splits=FILE mapping=FILE out=DIR``."""
    n = prepare_nyuv2(Path(opts.mat), Path(opts.splits), Path(opts.mapping), Path(opts.out), progress)
    return (f"prepared {n} frames in {opts.out}; train with: {command()} train --dataset nyuv2 --data {opts.out} "
            "--strategy dgl")


PREPARE = Job(prepare, PrepareOptions)


def is_prepared_folder(path: Path) -> bool:
    return path.is_dir() and (path / "train.txt").is_file() and (path / "test.txt").is_file() and (path / "train" / "labels_40").is_dir()


# --- the dataset ---------------------------------------------------------------------------------------


def _hsv_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ESANet's RandomHSV on an H x W x 3 float image in [0, 1]."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(np.clip(rgb, 0, 1))
    hsv[..., 0] = (hsv[..., 0] * rng.uniform(0.9, 1.1)) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.9, 1.1), 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] + rng.uniform(-25, 25) / 255.0, 0, 1)
    return hsv_to_rgb(hsv).astype(np.float32)


class FrameSet(torch.utils.data.Dataset):
    """Item: a whole batch ``(leave, [(index, seed)])`` -> a ``Batch`` of rgb (B,3,H,W), depth
    (B,1,H,W) and labels (B,H,W), finished in the loader whatever ``leave`` says."""

    def __init__(self, source, frames: list[int], spec: NYUv2Settings, depth_stats: tuple[float, float], train: bool):
        self.source, self.frames, self.spec, self.depth_stats, self.train = source, frames, spec, depth_stats, train
        self.ids = [f"{i:04d}" for i in frames]

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, i: int, rng: np.random.Generator | None):
        s = self.spec
        rgb, depth, labels = self.source.read(self.frames[i], s.raw_depth)
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        d = torch.from_numpy(depth)[None, None]
        y = torch.from_numpy(labels.astype(np.int64))[None, None].float()
        h, w = s.height, s.width
        if rng is not None and s.augment:  # ESANet: rescale by 1.0-1.4, then a random crop back to size
            scale = rng.uniform(1.0, 1.4)
            h, w = int(round(s.height * scale)), int(round(s.width * scale))
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        d = F.interpolate(d, size=(h, w), mode="nearest")  # never averages a hole into a reading
        y = F.interpolate(y, size=(h, w), mode="nearest")
        if rng is not None and s.augment:
            top, left = int(rng.integers(0, h - s.height + 1)), int(rng.integers(0, w - s.width + 1))
            crop = (..., slice(top, top + s.height), slice(left, left + s.width))
            x, d, y = x[crop], d[crop], y[crop]
            if rng.random() < 0.5:
                x, d, y = x.flip(-1), d.flip(-1), y.flip(-1)
            x = torch.from_numpy(_hsv_jitter(x[0].permute(1, 2, 0).numpy(), rng)).permute(2, 0, 1)[None]
        x = (x[0] - torch.from_numpy(IMAGENET_MEAN)[:, None, None]) / torch.from_numpy(IMAGENET_STD)[:, None, None]
        mean, std = self.depth_stats
        d = torch.where(d[0] > 0, (d[0] - mean) / std, torch.zeros_like(d[0]))
        return x.contiguous(), d.contiguous(), class_ids(y[0, 0])

    def __getitem__(self, key: tuple[bool, list[tuple[int, int]]]) -> Batch:
        items = key[1]
        loaded = [self.load(i, np.random.default_rng(seed) if self.train else None) for i, seed in items]
        rgb, depth, labels = (torch.stack(t) for t in zip(*loaded))
        index = [i for i, _ in items]
        return Batch.whole({"rgb": rgb, "depth": depth}, labels, [self.ids[i] for i in index], index)


class FrameSplit(DecodedSplit):
    """A NYUv2 split read on demand (``DecodedSplit``)."""

    def __init__(self, source, frames: list[int], spec: NYUv2Settings, depth_stats, *, train: bool):
        self.frames, self.train, self.num_workers = frames, train, spec.num_workers
        self.set = FrameSet(source, frames, spec, depth_stats, train)
        self.ids = self.set.ids


def _train_statistics(source, frames: list[int], spec: NYUv2Settings):
    """Mean and deviation of the valid depth readings, and the labels' median-frequency weights,
    over the training frames at their own resolution."""
    total, total_sq, count, labels = 0.0, 0.0, 0, []
    for f in frames:
        _, depth, lab = source.read(f, spec.raw_depth)
        valid = depth[depth > 0].astype(np.float64)
        total, total_sq, count = total + valid.sum(), total_sq + (valid**2).sum(), count + valid.size
        labels.append(class_ids(torch.from_numpy(lab.astype(np.int64))))
    if count < 2:
        raise DataError("nyuv2: the training frames have no valid depth readings")
    mean = total / count
    std = max((total_sq / count - mean**2) ** 0.5, 1e-6)
    weights = None
    if spec.class_weighting == "median_frequency":
        weights = median_frequency_weights(labels, NUM_CLASSES)
    return (float(mean), float(std)), weights


def load_nyuv2(cfg, seed: int = 0) -> Dataset:
    """``cfg`` is a ``DataConfig``; ``cfg.path`` a prepared folder or ``nyu_depth_v2_labeled.mat``."""
    if not cfg.path:
        raise DataError(f"nyuv2: pass --data DIR (a prepared folder: {command()} data prepare nyuv2 mat="
                        "nyu_depth_v2_labeled.mat splits=splits.mat mapping=classMapping40.mat out=DIR) "
                        "or --data nyu_depth_v2_labeled.mat")
    spec, path = cfg.settings, Path(cfg.path)
    if path.is_dir():
        source = PreparedFolder(path)
        train, test = source.ids["train"], source.ids["test"]
    elif path.is_file():
        splits = Path(spec.splits) if spec.splits else path.with_name("splits.mat")
        mapping = Path(spec.mapping) if spec.mapping else path.with_name("classMapping40.mat")
        train, test, source = open_labelled(path, splits, mapping)
    else:
        raise DataError(f"{path}: not found")
    train, val = carve_validation(train, spec.valid_fraction, path, "frame")
    stats, weights = _train_statistics(source, train, spec)
    return Dataset(
        train=FrameSplit(source, train, spec, stats, train=True),
        val=FrameSplit(source, val, spec, stats, train=False),
        test=FrameSplit(source, test, spec, stats, train=False),
        task="segmentation", num_classes=NUM_CLASSES, dims={"rgb": 3, "depth": 1},
        kinds={"rgb": "dense", "depth": "dense"}, class_weights=weights,
    )
