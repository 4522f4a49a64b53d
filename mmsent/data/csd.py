"""CMU Multimodal SDK computational sequences (``.csd``, HDF5) without the SDK.

Layout (the SDK's ``write_CSD``): one root group per file; ``<root>/data/<video>/features`` (T, D)
and ``<root>/data/<video>/intervals`` (T, 2) in seconds; ``<root>/metadata/<key>`` holding JSON
text. Reading is lazy: arrays are read from the open file when a video is asked for.

``build_mmsa`` turns a folder of MOSI/MOSEI ``.csd`` files into the MMSA pickle layout that
``load_mmsa`` reads: COVAREP / FACET / word-vector rows are averaged within each word interval (the
SDK's ``align`` with an average collapse), pause tokens ``sp`` are dropped with their rows, words
are grouped into the labelled opinion segments, and every segment is padded or cut to ``seq_len``
words (lengths kept). Nothing here prompts or downloads.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from mmsent.data.batch import DataError

EPS = 1e-5  # the SDK's interval tolerance


class CSD:
    """A read-only, lazy view of one ``.csd`` file."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 .csd file ({str(e).splitlines()[0]})") from None
        roots = list(self._file.keys())
        if len(roots) != 1 or "data" not in self._file[roots[0]]:
            raise DataError(f"{self.path}: expected one root group holding 'data', found {roots}")
        self.root = roots[0]
        self._data = self._file[self.root]["data"]

    @property
    def metadata(self) -> dict:
        meta = self._file[self.root].get("metadata", {})
        out = {}
        for k in meta:
            raw = meta[k][()]
            raw = raw[0] if getattr(raw, "shape", ()) else raw
            raw = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                out[k] = json.loads(raw)
            except json.JSONDecodeError:
                out[k] = raw
        return out

    def videos(self) -> list[str]:
        return list(self._data.keys())

    def __contains__(self, video: str) -> bool:
        return video in self._data

    def __getitem__(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        """(intervals (T, 2), features (T, D)) of one video."""
        if video not in self._data:
            raise DataError(f"{self.path}: no video {video!r}")
        g = self._data[video]
        try:
            intervals, features = np.asarray(g["intervals"]), np.asarray(g["features"])
        except (KeyError, OSError) as e:
            raise DataError(f"{self.path}: video {video!r} is unreadable ({e})") from None
        if intervals.ndim != 2 or intervals.shape[1] != 2 or len(features) != len(intervals):
            raise DataError(f"{self.path}: video {video!r} has intervals {intervals.shape} and features {features.shape}")
        return intervals, features

    def close(self) -> None:
        self._file.close()


def write_csd(path: str | Path, root: str, data: dict, metadata: dict | None = None) -> None:
    """Write ``{video: (intervals, features)}`` in the SDK's layout (used by tests and converters)."""
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        d = g.create_group("data")
        for vid, (intervals, features) in data.items():
            v = d.create_group(vid)
            v.create_dataset("intervals", data=np.asarray(intervals, dtype=np.float64))
            v.create_dataset("features", data=np.asarray(features))
        m = g.create_group("metadata")
        for k, val in (metadata or {"root name": root}).items():
            m.create_dataset(k, data=np.array([json.dumps(val)], dtype=h5py.string_dtype()))


def average_within(intervals: np.ndarray, features: np.ndarray, start: float, end: float) -> np.ndarray | None:
    """Mean of the feature rows whose interval overlaps [start, end] (None when none does)."""
    hit = (intervals[:, 1] > start + EPS) & (intervals[:, 0] < end - EPS)
    if not hit.any():
        return None
    return features[hit].astype(np.float64).mean(0)


FILE_PATTERNS = {  # modality -> glob patterns, first match wins
    "words": ["*TimestampedWords*.csd", "*Words*.csd"],
    "text": ["*WordVectors*.csd", "*glove*.csd"],
    "audio": ["*COVAREP*.csd"],
    "vision": ["*Facet*41*.csd", "*Facet_4.1*.csd", "*FACET*.csd", "*Facet*.csd", "*OpenFace*.csd"],
    "labels": ["*Opinion*Labels*.csd", "*Labels*.csd"],
}


def find_files(csd_dir: Path) -> dict[str, Path]:
    if not csd_dir.is_dir():
        raise DataError(f"{csd_dir}: not a directory of .csd files")
    found = {}
    for key, patterns in FILE_PATTERNS.items():
        for pat in patterns:
            hits = sorted(p for p in csd_dir.rglob("*") if p.match(pat) or p.name.lower() == pat.lower())
            hits = [p for p in hits if p.suffix == ".csd"]
            if hits:
                found[key] = hits[0]
                break
    missing = [k for k in ("words", "audio", "vision", "labels") if k not in found]
    if missing:
        raise DataError(f"{csd_dir}: no .csd file for {', '.join(missing)} "
                        f"(looked for {', '.join(p for k in missing for p in FILE_PATTERNS[k])})")
    return found


def _word(x) -> str:
    x = x[0] if np.ndim(x) else x
    return x.decode() if isinstance(x, bytes) else str(x)


def build_mmsa(csd_dir: str | Path, folds: dict[str, list[str]], *, seq_len: int = 50, progress=None) -> dict:
    """The MMSA pickle dict (``{"train"|"valid"|"test": {...}}``) from a folder of ``.csd`` files."""
    files = find_files(Path(csd_dir))
    csd = {k: CSD(p) for k, p in files.items()}
    feature_keys = [k for k in ("text", "audio", "vision") if k in csd]
    for split, vids in folds.items():
        for v in vids:
            for k in ("labels", "words", *feature_keys):
                if v not in csd[k]:
                    raise DataError(f"{files[k]}: video {v!r} of fold {split!r} is absent")
    out, empty, no_words = {}, 0, 0
    total = sum(len(v) for v in folds.values())
    done = 0
    for split, vids in folds.items():
        part = {"id": [], "raw_text": [], "regression_labels": [], **{k: [] for k in feature_keys},
                **{f"{k}_lengths": [] for k in feature_keys}}
        for vid in vids:
            seg_iv, seg_y = csd["labels"][vid]
            w_iv, w_tok = csd["words"][vid]
            rows = {k: csd[k][vid] for k in feature_keys}
            for i, ((s0, s1), y) in enumerate(zip(seg_iv, seg_y.reshape(len(seg_y), -1)[:, 0])):
                if not np.isfinite(y) or abs(y) > 3:
                    raise DataError(f"{files['labels']}: video {vid!r} segment {i} label {y} is outside [-3, 3]")
                inside = (w_iv[:, 0] >= s0 - EPS) & (w_iv[:, 1] <= s1 + EPS)
                words, seqs = [], {k: [] for k in feature_keys}
                for (a, b), tok in zip(w_iv[inside], w_tok[inside]):
                    token = _word(tok)
                    if token == "sp" or b - a <= EPS:  # pauses and zero-length words carry no word
                        continue
                    words.append(token)
                    for k in feature_keys:
                        avg = average_within(rows[k][0], rows[k][1], a, b)
                        if avg is None:
                            empty += 1
                            avg = np.zeros(rows[k][1].shape[1])
                        seqs[k].append(avg)
                part["id"].append(f"{vid}_{i}")
                part["raw_text"].append(" ".join(words))
                part["regression_labels"].append(float(y))
                for k in feature_keys:
                    dim = rows[k][1].shape[1]
                    x = np.zeros((seq_len, dim), dtype=np.float32)
                    n = min(len(seqs[k]), seq_len)
                    if n:
                        x[:n] = np.stack(seqs[k][:n])
                    part[k].append(x)
                    part[f"{k}_lengths"].append(n)
            done += 1
            if progress:
                progress(done, total)
        for k in feature_keys:
            part[k] = np.stack(part[k]) if part[k] else np.zeros((0, seq_len, rows_dim(csd[k])), np.float32)
            part[f"{k}_lengths"] = np.asarray(part[f"{k}_lengths"], dtype=np.int64)
            no_words += int((part[f"{k}_lengths"] == 0).sum()) if k == feature_keys[0] else 0
        part["regression_labels"] = np.asarray(part["regression_labels"], dtype=np.float32)
        out[split] = part
    for c in csd.values():
        c.close()
    if no_words:
        warnings.warn(f"{csd_dir}: {no_words} labelled segments hold no word; their sequences are empty", stacklevel=2)
    if empty:
        warnings.warn(f"{csd_dir}: {empty} word intervals had no overlapping feature row; filled with 0", stacklevel=2)
    return out


def rows_dim(c: CSD) -> int:
    return c[c.videos()[0]][1].shape[1]
