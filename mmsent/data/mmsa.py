"""Feature files in the MMSA layout: ``{"train"|"valid"|"test": {key: array}}`` as a pickle, or the
same as an ``.npz`` whose arrays are named ``<split>/<key>`` (read with ``allow_pickle=False``).

* ``mosi`` / ``mosei`` (CMU-MOSI, MOSEI: ``aligned_50.pkl``, ``unaligned_50.pkl``, the
  utterance-level ``mosi_utterance.pkl``): the ``text``/``audio``/``vision`` features, optional
  ``text_bert`` (N, 3, T) token ids + mask, ``regression_labels`` (N,) in [-3, 3].
* ``features`` (any N-modality data): every array of shape (N, T, F) or (N, F) is a modality,
  whatever its key (or the keys in ``data.modalities``); labels from ``regression_labels`` (any
  real value) or ``classification_labels`` (integers 0..K-1, any K >= 2).

Both read optional ``<modality>_lengths`` (unaligned sequences) and ``id``. Every split must hold
rows, one id per row, the same modalities with the same feature widths.

Pickles are opened with a restricted unpickler (builtins containers and numpy arrays only), so a
hostile file cannot run code. Non-finite values (COVAREP's -inf, NaN) become 0 with a warning that
counts them; features are standardized with train statistics over real (unpadded) steps.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mmsent.checks import first_line
from mmsent.data.batch import DataError, Dataset, Split
from mmsent.files import make_dir, write_bytes

MODALITIES = ("text", "audio", "vision")  # MOSI / MOSEI
SPLITS = {"train": ("train",), "val": ("valid", "val", "validation"), "test": ("test",)}
LABELS = {"regression": "regression_labels", "classification": "classification_labels"}
NOT_MODALITIES = {"id", "raw_text", "text_bert", "annotations"}

_SAFE_BUILTINS = {
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex",
    "bool", "slice", "range",
}
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # protocol 5 pickles rebuild arrays from a buffer; protocol 2 (Python 2 era MulT/MMSA files)
    # stores bytes as latin-1 text re-encoded by _codecs.encode. Both only build data.
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc.
        if (module, name) in _NUMPY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_arrays(path: str | Path):
    """The split dict of a pickle (restricted unpickler) or of an ``.npz`` (no pickled objects)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return safe_load_pickle(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        # object arrays need pickle; not a zip; a truncated or corrupted member
        raise DataError(f"{path}: not a loadable .npz of numeric/string arrays ({type(e).__name__}: "
                        f"{str(e)[:160]})") from None
    out: dict = {}
    for k, v in flat.items():
        split, sep, key = k.partition("/")
        if not sep:
            raise DataError(f"{path}: array {k!r} must be named <split>/<key> (e.g. train/audio)")
        out.setdefault(split, {})[key] = v
    return out


def write_pickle(data: dict, out: Path) -> Path:
    """Write an MMSA-layout dict atomically: a crash never leaves a half-written pickle under ``out``."""
    make_dir(out.parent)
    return write_bytes(out, pickle.dumps(data, protocol=4))


def safe_load_pickle(path: str | Path):
    """Unpickle allowing only builtins containers and numpy arrays; errors become ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a loadable MMSA pickle ({e}); only builtins and numpy arrays are allowed") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise DataError(f"{path}: malformed pickle ({type(e).__name__}: {e})") from None


# --- the schema of a feature file, checked where it enters (load_mmsa) --------------------------------

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_KNOWN_SPLITS = {name for names in SPLITS.values() for name in names}


def _near(a: str, b: str) -> bool:
    """``a`` is ``b`` up to case or one edit of a letter (a typo of a split name)."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 4:
        return False
    # one substitution, insertion, deletion or transposition
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a[i + 1:] == b[i + 1:] or a[i:] == b[i + 1:] or a[i + 1:] == b[i:] or \
        (a[i:i + 2] == b[i:i + 2][::-1] and a[i + 2:] == b[i + 2:])


def check_layout(path, raw) -> None:
    """What every feature file must be, whatever loads it: a mapping of splits with string keys,
    each split a mapping with string keys; no split name misspelled or differing only in case (it
    would be ignored without a word). One ``DataError`` naming the file, split and key."""
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict of splits, got {type(raw).__name__}")
    for top in raw:
        if not isinstance(top, str):
            raise DataError(f"{path}: split key {top!r} is a {type(top).__name__}, not a string")
    for top in raw:
        if top in _KNOWN_SPLITS:
            continue
        near = next((k for k in sorted(_KNOWN_SPLITS) if _near(top, k)), None)
        if near is not None:
            raise DataError(f"{path}: top-level key {top!r} looks like the split {near!r} but is not its name "
                            f"(splits: train, valid / val / validation, test); rename it")
    for top, part in raw.items():
        if top in _KNOWN_SPLITS and isinstance(part, dict):
            for key in part:
                if not isinstance(key, str):
                    raise DataError(f"{path}: split {top!r} has a key {key!r} of type {type(key).__name__}; keys "
                                    "must be strings")


def modality_key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a modality (it becomes a module name and a config key), or None."""
    from torch import nn

    if not key:
        return "is empty"
    if "." in key:
        return "contains '.'"
    if key.startswith("_") or hasattr(nn.Module, key) or key in ("multi",):
        return "is a reserved name (an attribute of a torch module, or 'multi', the fused branch)"
    return None


def _in_float32(path, split: str, key: str, a: np.ndarray) -> None:
    """Finite values beyond float32's range would become inf when cast: the file's, not NaN."""
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size:
        big = np.abs(a) > _FLOAT32_MAX
        big &= np.isfinite(a)
        if big.any():
            where = tuple(int(i) for i in np.argwhere(big)[0])
            raise DataError(f"{path}: {split}[{key!r}]{list(where)} = {a[where]:.6g} exceeds float32's range "
                            f"(|x| <= {_FLOAT32_MAX:.4g}); rescale the data")


def _array(path, split: str, part: dict, key: str, n: int | None = None) -> np.ndarray:
    if key not in part:
        raise DataError(f"{path}: split {split!r} has no key {key!r} (found {sorted(part)})")
    try:
        a = np.asarray(part[key])
    except Exception as e:  # ragged lists and the like
        raise DataError(f"{path}: {split}[{key!r}] is not an array ({e})") from None
    if a.ndim == 0 or a.dtype == object:
        raise DataError(f"{path}: {split}[{key!r}] is {_describe(part[key])}, not an array with one row per sample")
    if n is not None and len(a) != n:
        raise DataError(f"{path}: {split}[{key!r}] has {len(a)} rows but the split has {n} labels")
    return a


def _features(path, split: str, part: dict, m: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = _array(path, split, part, m, n)
    if a.ndim == 2:  # (N, F): one vector per sample
        a = a[:, None, :]
    if a.ndim != 3 or not np.issubdtype(a.dtype, np.number) or a.dtype.kind == "c":
        raise DataError(f"{path}: {split}[{m!r}] must be a numeric (N, T, F) array, got shape {a.shape} dtype {a.dtype}")
    if a.shape[1] == 0 or a.shape[2] == 0:
        raise DataError(f"{path}: {split}[{m!r}] has shape {a.shape}: a modality needs at least one step and one "
                        "feature (L >= 1, F >= 1)")
    _in_float32(path, split, m, a)
    a = a.astype(np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        warnings.warn(f"{path}: {split}[{m!r}] has {int(bad.sum())} non-finite values (NaN/inf); set to 0", stacklevel=3)
        a[bad] = 0.0
    T = a.shape[1]
    if f"{m}_lengths" in part:
        lengths = _array(path, split, part, f"{m}_lengths", n).astype(np.int64)
        if (lengths < 0).any() or (lengths > T).any():
            raise DataError(f"{path}: {split}[{m + '_lengths'!r}] must lie in [0, {T}], got range [{lengths.min()}, {lengths.max()}]")
        mask = np.arange(T)[None, :] < lengths[:, None]
    elif T == 1:
        mask = np.ones((n, 1), dtype=bool)  # a single utterance vector is always real, even if all zero
    else:
        mask = np.abs(a).sum(-1) > 0  # aligned pickles zero-pad without a length key
    return a, mask


def tokenize(texts: list[str], tokenizer_path: str, max_tokens: int):
    """Token ids and attention mask of ``texts`` with a local ``transformers`` tokenizer."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{tokenizer_path}: not a loadable local tokenizer ({type(e).__name__}: {first_line(e)})") from None
    enc = tok(list(texts), padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool(), tok.vocab_size


def _split(path, raw: dict, name: str) -> tuple[str, dict]:
    for key in SPLITS[name]:
        if isinstance(raw.get(key), dict):
            return key, raw[key]
    raise DataError(f"{path}: missing split {SPLITS[name][0]!r} (found {sorted(map(str, raw))})")


def _is_modality(key: str, value, n: int) -> bool:
    if key in NOT_MODALITIES or key.endswith("_lengths") or "label" in key:
        return False
    a = np.asarray(value) if isinstance(value, np.ndarray) else None
    return a is not None and a.ndim in (2, 3) and len(a) == n and np.issubdtype(a.dtype, np.number)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape}, dtype {value.dtype}"
    return type(value).__name__ + (f" of {len(value)}" if hasattr(value, "__len__") else "")


def _labels(path, split: str, part: dict, key: str, sentiment: bool) -> np.ndarray:
    y = _array(path, split, part, key)
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1) or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: {split}[{key!r}] must be numeric with one value per row, got shape {y.shape} dtype {y.dtype}")
    _in_float32(path, split, key, y)
    y = y.astype(np.float64).reshape(-1)
    if key == LABELS["classification"]:
        bad = np.flatnonzero(~np.isfinite(y) | (y < 0) | (y != np.round(y)))
        what = "is not a class id (an integer >= 0)"
    elif sentiment:
        bad = np.flatnonzero(~np.isfinite(y) | (np.abs(y) > 3))
        what = "is outside [-3, 3]"
    else:
        bad = np.flatnonzero(~np.isfinite(y))
        what = "is not finite"
    if len(bad):
        raise DataError(f"{path}: {split}[{key!r}][{bad[0]}] = {y[bad[0]]} {what}")
    return y


def parts_of(raw: dict, key: str) -> dict:
    return raw.get(key) if isinstance(raw.get(key), dict) else {}


def load_mmsa(path: str | Path | dict, *, modalities=None, text_tokens: bool = False, standardize: bool = True,
              tokenizer: str | None = None, max_tokens: int = 50, task: str = "regression",
              sentiment: bool = True) -> Dataset:
    """Read an MMSA-layout file (or the already-loaded dict, e.g. from ``csd.build_mmsa``).

    ``sentiment=True`` is MOSI/MOSEI: modalities among text/audio/vision, regression labels in
    [-3, 3]; ``text_tokens`` reads BERT ids from ``text_bert`` and ``tokenizer`` (a local tokenizer
    directory) tokenizes ``raw_text`` instead of the ``text`` features. ``sentiment=False`` reads
    any modality keys. ``task`` is regression, classification or auto (regression labels when the
    file has them, else classification labels).
    """
    vocab = 30522  # bert-base-uncased, the tokenizer of MMSA's text_bert
    raw = path if isinstance(path, dict) else load_arrays(path)
    if isinstance(path, dict):
        path = "<prepared data>"
    check_layout(path, raw)
    if modalities is not None:
        twice = next((m for i, m in enumerate(modalities) if m in modalities[:i]), None)
        if twice is not None:
            raise DataError(f"{path}: data.modalities names {twice!r} twice; name each modality once")
    parts = {name: _split(path, raw, name) for name in SPLITS}
    train_key, train = parts["train"]
    if task == "auto":
        task = "regression" if LABELS["regression"] in train else "classification"
    if task not in LABELS:
        raise DataError(f"{path}: task must be regression, classification or auto, got {task!r}")
    label_key = LABELS[task]
    n_train = len(_array(path, train_key, train, label_key))
    if n_train == 0:
        raise DataError(f"{path}: split {train_key!r} is empty (0 rows of {label_key!r})")
    inferred = modalities is None
    if modalities is None:
        if sentiment:  # a pickle prepared without word vectors has no `text`
            modalities = [m for m in MODALITIES if m in train or (m == "text" and (tokenizer or text_tokens))]
            if not modalities:
                raise DataError(f"{path}: no modality among {', '.join(MODALITIES)} in split {train_key!r}")
        else:
            modalities = [k for k, v in train.items() if _is_modality(k, v, n_train)]
            unused = [f"{k!r} ({_describe(v)})" for k, v in train.items()
                      if k not in modalities and k not in NOT_MODALITIES and not k.endswith("_lengths")
                      and "label" not in k]
            if unused:  # never dropped without a word: the user may have meant one as a modality
                warnings.warn(f"{path}: split {train_key!r}: not used as modalities (a modality is a numeric (n, L, D) "
                              f"or (n, D) array with n = {n_train} rows): {', '.join(unused)}; name the modalities "
                              "with data.modalities=[...] to choose", stacklevel=2)
            if not modalities:
                raise DataError(f"{path}: no modality in split {train_key!r}: expected arrays of shape (n, L, D) or "
                                f"(n, D) with n = {n_train} rows (found keys {', '.join(sorted(map(str, train)))})")
    bad_key = next(((m, why) for m in modalities if (why := modality_key_problem(m))), None)
    if bad_key is not None:
        raise DataError(f"{path}: modality key {bad_key[0]!r} {bad_key[1]}; rename it in the file")
    splits, ys, all_ids = {}, {}, {}
    for name, (key, part) in parts.items():
        y = _labels(path, key, part, label_key, sentiment)
        n = len(y)
        if n == 0:
            raise DataError(f"{path}: split {key!r} is empty (0 rows of {label_key!r})")
        ids = [str(i) for i in part["id"]] if "id" in part else [f"{key}_{i}" for i in range(n)]
        if len(ids) != n:
            raise DataError(f"{path}: {key}['id'] has {len(ids)} entries but the split has {n} rows")
        if len(set(ids)) != n:  # per-sample state, predictions and significance tests are keyed by id
            first = next(i for k, i in enumerate(ids) if i in ids[:k])
            raise DataError(f"{path}: {key}['id'] holds {first!r} more than once ({n - len(set(ids))} repeats); "
                            "ids must be unique within a split")
        all_ids[key] = set(ids)
        if inferred:  # a modality of another split that train lacks would be dropped without a word
            n_rows = len(part[label_key]) if label_key in part else n
            extra = sorted(k for k, v in part.items() if k not in modalities
                           and (k in MODALITIES if sentiment else _is_modality(k, v, n_rows)))
            if extra:
                raise DataError(f"{path}: split {key!r} has modality {extra[0]!r} that split {train_key!r} lacks; "
                                "every split needs the same modalities")
        x, mask = {}, {}
        for m in modalities:
            if m == "text" and tokenizer:
                if "raw_text" not in part:
                    raise DataError(f"{path}: split {key!r} has no key 'raw_text' to tokenize")
                texts = [str(t) for t in part["raw_text"]]
                if len(texts) != n:
                    raise DataError(f"{path}: {key}['raw_text'] has {len(texts)} rows but the split has {n} labels")
                x[m], mask[m], vocab = tokenize(texts, tokenizer, max_tokens)
                continue
            if m == "text" and text_tokens:
                tb = _array(path, key, part, "text_bert", n)
                if tb.ndim != 3 or tb.shape[1] < 2:
                    raise DataError(f"{path}: {key}['text_bert'] must be (N, 3, T) ids/mask/types, got {tb.shape}")
                x[m] = torch.from_numpy(tb[:, 0].astype(np.int64))
                mask[m] = torch.from_numpy(tb[:, 1] > 0)
                continue
            a, mk = _features(path, key, part, m, n)
            if name != "train" and a.shape[-1] != splits["train"].x[m].shape[-1]:
                raise DataError(f"{path}: {key}[{m!r}] has {a.shape[-1]} features per step but "
                                f"{train_key}[{m!r}] has {splits['train'].x[m].shape[-1]}")
            x[m], mask[m] = torch.from_numpy(a), torch.from_numpy(mk)
        ys[name] = y
        splits[name] = Split(x, mask, torch.from_numpy(y.astype(np.float32)), ids)
    keys = list(all_ids)
    for i, a in enumerate(keys):  # the same id in two splits: a leak the user should see
        for b in keys[i + 1:]:
            shared = all_ids[a] & all_ids[b]
            if shared and "id" in parts_of(raw, a) and "id" in parts_of(raw, b):
                warnings.warn(f"{path}: {len(shared)} id(s) appear in both {a!r} and {b!r} (e.g. {sorted(shared)[0]!r}): "
                              "the same sample in two splits leaks between them", stacklevel=2)
    num_classes = 1
    if task == "classification":
        num_classes = int(max(y.max() for y in ys.values())) + 1
        if num_classes < 2:
            raise DataError(f"{path}: {label_key!r} holds a single class; classification needs at least two")
        seen = np.unique(np.concatenate(list(ys.values())))
        if num_classes > 1000 and len(seen) < num_classes / 2:  # the head allocates a logit per class id
            where, top = next((k, y) for (k, _), y in zip(parts.values(), ys.values()) if y.max() + 1 == num_classes)
            raise DataError(f"{path}: {where}[{label_key!r}] holds class id {int(top.max())}, but only {len(seen)} "
                            f"distinct classes occur: class ids must be 0..K-1 (renumber them)")
        for s in splits.values():
            s.y = s.y.long()
    tokens = text_tokens or bool(tokenizer)
    if standardize:
        for m in modalities:
            if m == "text" and tokens:
                continue
            real = splits["train"].x[m][splits["train"].mask[m]]  # (steps, F)
            if len(real) == 0:  # all zeros: every step reads as padding (no length key says otherwise)
                warnings.warn(f"{path}: train[{m!r}] is zero everywhere, so every step reads as padding and the "
                              "modality carries nothing to learn from", stacklevel=2)
                continue
            if len(real) == 1:  # one real step: no spread to divide by
                real = torch.cat([real, real])
            mean, std = real.mean(0), real.std(0)
            wide = not (torch.isfinite(mean).all() and torch.isfinite(std).all())
            if wide:  # values near float32's limit overflow its sums: the statistics in float64
                real = real.double()
                mean, std = real.mean(0), real.std(0)
            std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay put
            for s in splits.values():
                x = s.x[m].double() if wide else s.x[m]
                s.x[m] = torch.where(s.mask[m][..., None], (x - mean) / std, torch.zeros((), dtype=x.dtype)).float()
    dims = {m: (vocab if (m == "text" and tokens) else splits["train"].x[m].shape[-1]) for m in modalities}
    return Dataset(
        splits["train"], splits["val"], splits["test"], task=task, num_classes=num_classes, dims=dims,
        token_modalities=("text",) if tokens else (),
    )
