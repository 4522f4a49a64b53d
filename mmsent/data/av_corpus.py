"""An audio-visual corpus on disk: its split file (``splits.csv``, CREMA-D's ``train.csv`` /
``test.csv``, ``vggsound.csv`` or class folders), its classes, and where each clip's WAV, frames
or video are (see ``mmsent.data.av`` for the layouts)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mmsent.data.batch import DataError

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # the OGM-GE/DGL label ids 0..5
HEADER_WORDS = {"clip", "id", "name", "file", "filename", "video", "youtube_id", "ytid", "path"}
VIDEO_EXTS = (".mp4", ".flv", ".avi", ".mkv", ".webm", ".mov")


@dataclass(frozen=True)
class Clip:
    id: str
    label: int
    split: str  # train | test
    wav: Path | None
    frames: Path | None  # folder of .jpg
    video: Path | None = None


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


def plain_name(name: str) -> bool:
    """A name that stays one entry of the folder it is joined to: no separators, not '.' or '..',
    not empty, no NUL."""
    import os

    return bool(name) and name not in (".", "..") and "\x00" not in name and "/" not in name \
        and (os.altsep is None or os.altsep not in name) and os.sep not in name


def walk(root: Path, skipped: list | None = None) -> list[Path]:
    """Every path below ``root``, sorted, following symlinked folders that stay inside the corpus's
    real folder (a corpus assembled from links is common on shared machines) but never a link that
    leads out of it (a link to / would walk the whole filesystem) nor the same real folder twice
    (no link cycles)."""
    import os

    top = os.path.realpath(root)
    out, seen = [], set()
    for here, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        inside = [d for d in dirs if _within(os.path.realpath(os.path.join(here, d)), top)]
        if skipped is not None:
            skipped += [Path(here) / d for d in dirs if d not in inside]
        dirs[:] = inside
        out += [Path(here) / n for n in inside + names]
    return sorted(out)


def _within(path: str, top: str) -> bool:
    import os

    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def scan(dataset: str, root: Path) -> tuple[list[Clip], list[str]]:
    """Every clip of the split file with its media, checked: unknown labels, missing or corrupt
    WAVs and empty frame folders are errors naming the clip and file."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a {dataset} corpus folder)")
    outside: list[Path] = []
    files = walk(root, outside)  # one walk serves the split file, classes.txt and the media index
    rows, split_file = read_split_file(root, files)
    if not rows:
        raise DataError(f"{split_file}: no clips listed")
    classes = class_names(dataset, files, [r[1] for r in rows])
    ids = {c: i for i, c in enumerate(classes)}
    media = index_media(files)
    clips, seen = [], {}
    for clip, label, split in rows:
        if not plain_name(clip):  # a clip id names files in the corpus and in every output folder
            raise DataError(f"{split_file}: clip {clip!r} is not a plain file name (no folders, no '..', not "
                            "absolute): clip ids name files inside the corpus and the output folder")
        if clip in seen:  # a clip twice (or in train and test) would leak or double-count
            raise DataError(f"{split_file}: clip {clip!r} is listed twice ({seen[clip]} and {split})")
        seen[clip] = split
        key = label.replace(" ", "_")
        if key not in ids:
            raise DataError(f"{split_file}: clip {clip!r} has unknown class label {label!r}; "
                            f"classes: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}")
        clips.append(Clip(clip, ids[key], split, media["wav"].get(clip), media["frames"].get(clip),
                          media["video"].get(clip)))
    lost = [c for c in clips if c.wav is None and c.frames is None and c.video is None]
    if lost and outside:
        import os

        raise DataError(f"{outside[0]}: a link to a folder out of the corpus ({os.path.realpath(outside[0])}), which the "
                        f"scan does not follow; clip {lost[0].id!r} has no media inside {root} (move or copy the media "
                        "into the corpus folder)")
    return clips, classes


def is_av_folder(path: Path) -> bool:
    """A folder holding a split file at its top, or media in <split>/<class>/ folders."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    # train/ + test/ with train.txt + test.txt beside them is NYUv2's prepared layout, not media
    return bool(names & {"splits.csv", "vggsound.csv"}) or {"train.csv", "test.csv"} <= names or (
        "train" in names and "test" in names and not {"train.txt", "test.txt"} <= names)
