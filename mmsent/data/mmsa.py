"""CMU-MOSI / MOSEI in the MMSA pickle layout (``aligned_50.pkl``, ``unaligned_50.pkl`` and the
utterance-level ``mosi_utterance.pkl``): ``{"train"|"valid"|"test": {key: array}}``.

Keys read per split: ``text``/``audio``/``vision`` features (N, T, F); optional ``text_bert``
(N, 3, T) token ids + attention mask; optional ``audio_lengths``/``vision_lengths`` for the
unaligned variant; ``regression_labels`` (N,) in [-3, 3]; ``id``.

Pickles are opened with a restricted unpickler (builtins containers and numpy arrays only), so a
hostile file cannot run code. Non-finite values (COVAREP's -inf, NaN) become 0 with a warning that
counts them; features are standardized with train statistics over real (unpadded) steps.
"""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from mmsent.data.batch import DataError, Dataset, Split

MODALITIES = ("text", "audio", "vision")
SPLITS = {"train": "train", "val": "valid", "test": "test"}

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


def safe_load_pickle(path: str | Path):
    """Unpickle allowing only builtins containers and numpy arrays; errors become ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(io.BufferedReader(f)).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a loadable MMSA pickle ({e}); only builtins and numpy arrays are allowed") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise DataError(f"{path}: malformed pickle ({type(e).__name__}: {e})") from None


def _array(path, split: str, part: dict, key: str, n: int | None = None) -> np.ndarray:
    if key not in part:
        raise DataError(f"{path}: split {split!r} has no key {key!r} (found {sorted(part)})")
    try:
        a = np.asarray(part[key])
    except Exception as e:  # ragged lists and the like
        raise DataError(f"{path}: {split}[{key!r}] is not an array ({e})") from None
    if n is not None and len(a) != n:
        raise DataError(f"{path}: {split}[{key!r}] has {len(a)} rows but the split has {n} labels")
    return a


def _features(path, split: str, part: dict, m: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = _array(path, split, part, m, n)
    if a.ndim == 2:  # (N, F): one vector per sample
        a = a[:, None, :]
    if a.ndim != 3 or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{path}: {split}[{m!r}] must be a numeric (N, T, F) array, got shape {a.shape} dtype {a.dtype}")
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

    tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    enc = tok(list(texts), padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool(), tok.vocab_size


def load_mmsa(path: str | Path | dict, *, modalities=None, text_tokens: bool = False, standardize: bool = True,
              tokenizer: str | None = None, max_tokens: int = 50) -> Dataset:
    """Read an MMSA-layout pickle into a regression ``Dataset`` (MOSI sentiment in [-3, 3]).

    ``text_tokens=True`` reads BERT token ids from ``text_bert`` instead of the ``text`` features;
    ``tokenizer`` (a local tokenizer directory) instead tokenizes the ``raw_text`` transcripts.
    ``path`` may also be the already-unpickled dict (e.g. straight from ``csd.build_mmsa``).
    """
    vocab = 30522  # bert-base-uncased, the tokenizer of MMSA's text_bert
    raw = path if isinstance(path, dict) else safe_load_pickle(path)
    if isinstance(path, dict):
        path = "<prepared data>"
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict of splits, got {type(raw).__name__}")
    if modalities is None:  # whatever the file holds: a pickle prepared without word vectors has no `text`
        train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
        modalities = [m for m in MODALITIES if m in train or (m == "text" and (tokenizer or text_tokens))]
        if not modalities:
            raise DataError(f"{path}: no modality among {', '.join(MODALITIES)} in split 'train'")
    splits = {}
    for name, key in SPLITS.items():
        if key not in raw or not isinstance(raw[key], dict):
            raise DataError(f"{path}: missing split {key!r} (found {sorted(map(str, raw))})")
        part = raw[key]
        y = _array(path, key, part, "regression_labels").astype(np.float64).reshape(-1)
        n = len(y)
        bad = np.flatnonzero(~np.isfinite(y) | (np.abs(y) > 3))
        if len(bad):
            raise DataError(f"{path}: {key}['regression_labels'][{bad[0]}] = {y[bad[0]]} is outside [-3, 3]")
        ids = [str(i) for i in part["id"]] if "id" in part else [f"{key}_{i}" for i in range(n)]
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
            x[m], mask[m] = torch.from_numpy(a), torch.from_numpy(mk)
        splits[name] = Split(x, mask, torch.from_numpy(y.astype(np.float32)), ids)
    tokens = text_tokens or bool(tokenizer)
    if standardize:
        for m in modalities:
            if m == "text" and tokens:
                continue
            real = splits["train"].x[m][splits["train"].mask[m]]  # (steps, F)
            mean, std = real.mean(0), real.std(0)
            std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay put
            for s in splits.values():
                s.x[m] = torch.where(s.mask[m][..., None], (s.x[m] - mean) / std, torch.zeros(()))
    dims = {m: (vocab if (m == "text" and tokens) else splits["train"].x[m].shape[-1]) for m in modalities}
    return Dataset(
        splits["train"], splits["val"], splits["test"], task="regression", num_classes=1, dims=dims,
        token_modalities=("text",) if tokens else (),
    )
