"""A run folder on disk: what it holds, who may write it, and how it is read back.

A run directory holds the marker ``.mmsent-run``, ``config.json``, ``metrics.jsonl`` (one line per
epoch), ``best.pt`` and ``last.pt`` (both written atomically), ``.lock`` (``RunLock``: one writer)
and, when done, ``results.json``. Only a folder with the marker is ever written into, reused or
cleaned; checkpoints are read with ``weights_only=True`` and never run code.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mmsent.checks import first_line
from mmsent.config import Config, load_config
from mmsent.files import FileError, RunLock, read_json, read_log, write_json, write_text


class RunError(RuntimeError):
    """A run that cannot start or go on (existing run directory, non-finite loss...)."""


def load_checkpoint(path: Path, device) -> dict:
    """A checkpoint written by ``fit``. Only tensors and plain containers are read
    (``weights_only=True``): a file holding anything else, code included, is refused, never run.
    A missing, empty or truncated file is a ``RunError`` naming it."""
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found; the run directory is incomplete (start a new run with another --out)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # what weights_only raises for a disallowed global
        raise RunError(f"{path}: refused to load: it holds objects other than tensors and plain containers "
                       f"({first_line(e)[:160]}); mmsent never writes such checkpoints") from None
    except Exception as e:  # empty, truncated or not a checkpoint at all
        raise RunError(f"{path}: damaged checkpoint ({type(e).__name__}: {first_line(e)[:160]}); "
                       "start a new run with another --out") from None
    problem = checkpoint_problem(ckpt, full=path.name == "last.pt")
    if problem:
        raise RunError(f"{path}: damaged checkpoint ({problem}); start a new run with another --out")
    return ckpt


def _shown(v) -> str:
    """A value as one short line (a tensor's repr spans lines)."""
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    return " ".join(repr(v).split())[:40]


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def checkpoint_problem(ckpt, full: bool) -> str | None:
    """The schema of what ``fit`` writes, checked where a checkpoint enters: ``best.pt`` holds the
    model's weights (finite: a NaN weight would surface later as a "non-finite training loss" that
    blames the learning rate, or as NaN predictions) and its epoch; ``last.pt`` adds the optimizer,
    the strategy, both RNG states and the loop's bookkeeping, whose epochs must be consistent.
    A mismatch with the model (a tensor's shape, a missing key) is load_state_dict's to say."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        return "no 'model' weights"
    for k, v in ckpt["model"].items():
        if not isinstance(v, torch.Tensor):
            return f"model entry {k!r} is a {type(v).__name__}, not a tensor"
        if v.is_floating_point() and not torch.isfinite(v).all():
            return f"model weight {k!r} holds NaN or infinite values"
    if not full:
        return None if "epoch" not in ckpt or (_int(ckpt["epoch"]) and ckpt["epoch"] >= 0) else \
            f"epoch = {_shown(ckpt['epoch'])} is not an epoch"
    for key, kind in (("optimizer", dict), ("strategy", dict), ("state", dict), ("rng", torch.Tensor),
                      ("generator", torch.Tensor)):
        if not isinstance(ckpt.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    for key in ("rng", "generator"):
        if ckpt[key].dtype != torch.uint8:
            return f"{key!r} is not a random generator's state (dtype {ckpt[key].dtype})"
    state = ckpt["state"]
    epoch, best = state.get("epoch"), state.get("best_epoch")
    if not (_int(epoch) and epoch >= 0):
        return f"state['epoch'] = {_shown(epoch)} is not an epoch"
    if not (_int(best) and -1 <= best <= epoch):
        return f"state['best_epoch'] = {_shown(best)} is not an epoch of 0..{epoch}"
    score = state.get("best_score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
        return f"state['best_score'] = {_shown(score)} is not a number"
    if not (state.get("best_val") is None or isinstance(state.get("best_val"), dict)):
        return f"state['best_val'] = {_shown(state.get('best_val'))} is not a mapping"
    if best >= 0 and not isinstance(state.get("best_val"), dict):
        return f"state['best_val'] is missing for the selected epoch {best}"
    return None


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.dataset}-{cfg.strategy.name}-{cfg.model.fusion}-s{cfg.seed}-{stamp}"


MARKER = ".mmsent-run"  # written into every run directory: only such a directory is ever reused
OURS = ("config.json", "metrics.jsonl", "best.pt", "last.pt", "results.json", "test_predictions.csv", MARKER,
        RunLock.NAME)


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{path}: not found; {run_dir}: not a run directory (give the --out DIR of an earlier train)")
    try:
        tree = read_json(path, "run config", "; the run cannot be resumed, start a new one with another --out")
    except FileError as e:
        raise RunError(str(e)) from None
    return load_config(base=tree)


class RunFolder:
    """The folder one ``fit`` writes, locked (``RunLock``) from before its first write to the end.

    ``open`` makes or reuses it: it appears complete (marker + ``config.json``) or not at all, and
    nothing the program did not write is ever replaced or deleted. An existing non-empty folder must
    be a run directory of ours; without a ``last.pt`` (it died, or the disk filled, before its first
    checkpoint) it is started again in place. ``discard`` removes what a fresh run wrote when it ends
    before its first checkpoint (bad data found mid-epoch, out of memory, an interrupt): such a
    folder holds nothing to resume, and leaving it would block the next run."""

    def __init__(self, path: Path, lock: RunLock, fresh: bool, existed: bool):
        self.path, self.lock, self.fresh, self.existed = path, lock, fresh, existed

    @classmethod
    def open(cls, run: Path, cfg: Config, resume: bool) -> "RunFolder":
        try:
            return cls._open(run, cfg, resume)
        except FileError as e:  # the lock is held, the disk is full: one line, like every other refusal
            raise RunError(str(e)) from None

    @staticmethod
    def check(run: Path, resume: bool, finished: bool = True) -> None:
        """What ``open`` refuses (``train --dry-run`` asks this alone). ``open`` checks a finished
        folder (``finished``) only once it holds the lock, so a live writer is named instead."""
        if run.is_symlink():
            raise RunError(f"{run}: is a symbolic link; pass the folder it points to, or another --out")
        host = next((p for p in Path(run).absolute().parents if (p / MARKER).is_file()), None)
        if host is not None:  # a run inside a run: its files would mix with the other run's
            raise RunError(f"{run}: lies inside the run directory {host}; pass an --out outside it")
        if run.exists() and not run.is_dir():
            raise RunError(f"{run}: exists and is not a directory; pass another --out")
        if resume and not (run / MARKER).is_file():
            raise RunError(f"{run}: not an mmsent run directory (no {MARKER}); nothing to resume")
        if not resume and run.is_dir() and any(run.iterdir()) and not (run / MARKER).is_file():
            raise RunError(f"{run}: exists, is not empty and is not an mmsent run directory; pass another --out")
        if finished and not resume and any((run / f).exists() for f in ("last.pt", "results.json")):
            raise RunError(f"{run}: run directory exists and is not empty; pass --resume or another --out")

    @classmethod
    def _open(cls, run: Path, cfg: Config, resume: bool, again: bool = True) -> "RunFolder":
        cls.check(run, resume, finished=False)
        if resume:
            return cls(run, RunLock(run).acquire(), fresh=False, existed=True)
        if run.is_dir() and any(run.iterdir()):
            lock = RunLock(run).acquire()
            try:
                if any((run / f).exists() for f in ("last.pt", "results.json")):
                    raise RunError(f"{run}: run directory exists and is not empty; pass --resume or another --out")
                for name in ("metrics.jsonl", "best.pt"):  # ours, from before its first checkpoint
                    (run / name).unlink(missing_ok=True)
                write_json(run / "config.json", cfg.to_dict())
            except BaseException:
                lock.release()
                raise
            return cls(run, lock, fresh=True, existed=True)
        existed = run.is_dir()
        try:
            run.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}.", dir=run.parent))
        except OSError as e:
            raise RunError(f"{run}: cannot create the run directory ({e.strerror or e}); pass another --out") from None
        lock = None
        try:
            write_text(tmp / MARKER, "written by mmsent: a run directory (config.json, checkpoints, logs)\n")
            write_json(tmp / "config.json", cfg.to_dict())
            lock = RunLock(tmp).acquire()  # the lock follows the file through the rename
            os.rename(tmp, run)  # replaces at most an empty directory
        except BaseException as e:
            if lock is not None:
                lock.release()
            shutil.rmtree(tmp, ignore_errors=True)  # ours, made above: never left beside the run
            if isinstance(e, OSError) and again and (run / MARKER).is_file():
                return cls._open(run, cfg, resume, again=False)  # another process made it meanwhile
            if isinstance(e, OSError):
                raise RunError(f"{run}: cannot create the run directory ({e.strerror or e}); pass another --out") from None
            raise
        return cls(run, lock, fresh=True, existed=existed)

    def discard(self) -> None:
        """Remove what this fresh run wrote (known names, temporary files), then the folder if it is
        empty and was not there before; anything else stays."""
        for p in list(self.path.iterdir()) if self.path.is_dir() else []:
            if p.name in OURS or p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
        if not self.existed:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def close(self) -> None:
        self.lock.release()


def saved_epoch(run: Path) -> int:
    try:
        return int(torch.load(run / "last.pt", map_location="cpu", weights_only=True)["state"]["epoch"])
    except Exception:
        return -1


def truncate_log(path: Path, last_epoch: int) -> None:
    """Drop log lines of epochs after the checkpoint (a crash between log and checkpoint) and a last
    line cut short (a crash or a full disk mid-append); any other damaged line is named."""
    if not path.is_file():
        return
    try:
        rows = read_log(path)
    except FileError as e:
        raise RunError(f"{e}; the log no longer matches the checkpoints, start a new run with another --out") from None
    keep = [r for r in rows if "provenance" in r or r["epoch"] <= last_epoch]
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
