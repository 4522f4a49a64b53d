"""A run folder on disk: what it holds, who may write it, and how it is read back.

A run directory holds the marker ``.mmsent-run``, ``config.json``, ``metrics.jsonl`` (one line per
epoch), ``best.pt`` and ``last.pt`` (both written atomically), ``.lock`` (``RunLock``: one writer)
and, when done, ``results.json``. Only a folder with the marker is ever written into, reused or
cleaned; checkpoints are read with ``weights_only=True`` and never run code.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from mmsent.checks import RunError, command, first_line, is_out_of_memory
from mmsent.config import RESUMABLE, Config, differences, load_config
from mmsent.distributed import Dist, lost_peer
from mmsent.files import (FileError, RunLock, append_line, jsonable, read_json, read_log, save_torch, write_json,
                          write_text)
from mmsent.interrupt import Interrupted, StopAtSafePoint, ignore_stop_signals
from mmsent.provenance import now as time_now
from mmsent.tracking import Trackers


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


def optimizer_problem(optimizer: torch.optim.Optimizer) -> str | None:
    """What ``load_state_dict`` lets through but the next step trips on (a KeyError or a size
    mismatch deep inside Adam): per parameter, the same buffers as every other parameter, each a
    finite tensor of the parameter's shape, and a finite step count."""
    keys = None
    for i, p in enumerate(q for g in optimizer.param_groups for q in g["params"]):
        state = optimizer.state.get(p)
        if not state:
            continue
        if keys is None:
            keys = set(state)
        if set(state) != keys:
            return f"parameter {i} holds {sorted(state)}, the others {sorted(keys)}"
        for k, v in state.items():
            if k == "step":
                ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
                    (isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point())
                if not ok or not math.isfinite(float(v)) or float(v) < 0:
                    return f"parameter {i}: step is not a count"
            elif v is None:
                continue
            elif not isinstance(v, torch.Tensor) or v.shape != p.shape or not torch.isfinite(v).all():
                return f"parameter {i}: {k!r} is not a finite tensor of shape {tuple(p.shape)}"
    return None


def check_resume_config(run: Path, cfg: Config) -> None:
    """A run is one run: the resumed config must be the run's own, but for its budget and place."""
    stored = load_run_config(run).to_dict() if (run / "config.json").is_file() else None
    changed = [d for d in differences(stored, cfg.to_dict()) if not d.startswith(RESUMABLE)] if stored else []
    if changed:
        raise RunError(f"{run}: --resume continues the same run, but {changed[0]}"
                       + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
                       + "; only train.epochs (and device, train.log, the folder's place) may change: start a new "
                         "run with another --out")


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
        if self.lock is not None:
            self.lock.release()

    # --- the folder as a training run writes it (``train.train``) ---------------------------------

    @classmethod
    @contextmanager
    def session(cls, run: Path, cfg: Config, resume: bool, dist: Dist, oom_hint: str = ""):
        """The folder from its lock to its results. Rank 0 opens (or reopens) and alone writes it;
        signals stop the run only at ``safe_point``; trackers follow the run. An error on the way
        out is one line saying what the folder now holds and how to go on; a fresh folder that
        holds no checkpoint yet is removed (nothing to resume, and it would block the next run).
        ``oom_hint``: the data's share of an out-of-memory error (``resources.largest_input``)."""
        opened: list[RunFolder] = []
        dist.on_main(lambda: opened.append(cls.open(run, cfg, resume)), RunError)
        folder = opened[0] if opened else cls(run, None, fresh=False, existed=True)  # another rank: writes nothing
        try:
            with StopAtSafePoint() as folder.stop:
                folder.trackers = Trackers([n.strip() for n in cfg.train.log.split(",")], run, cfg.to_dict(),
                                           active=dist.is_main)
                yield folder
                if folder.stop.requested and dist.is_main:  # it came after the last safe point: nothing was cut short
                    print(f"note: {signal.Signals(folder.stop.signum).name} arrived as the run ended; {run} is "
                          "complete (results.json written)", file=sys.stderr)
        except BaseException as e:
            folder.fail(e, oom_hint)
            raise
        finally:
            if folder.trackers is not None:
                folder.trackers.close()
            folder.close()

    stop: StopAtSafePoint | None = None
    trackers: Trackers | None = None

    @property
    def writes(self) -> bool:
        return self.lock is not None

    def fail(self, e: BaseException, oom_hint: str) -> None:
        """Raise ``e`` as one line saying what the folder holds (a fresh one without a checkpoint
        is discarded first); return for an error that is not the run's to explain."""
        run = self.path
        unsaved = self.fresh and not (run / "last.pt").is_file()
        if unsaved:
            self.discard()
        keep = f"{run} holds epochs 0-{saved_epoch(run)}"
        if isinstance(e, Interrupted):
            raise Interrupted(e.signum, f"interrupted by {signal.Signals(e.signum).name}: "
                              + (f"no epoch of {run} had finished, so nothing was kept; run the same command again"
                                 if unsaved else f"{keep}; continue with: {command()} train --out {run} --resume")) from None
        lost = lost_peer(e)
        if lost:  # the job is over; torchrun's own summary follows and names the exit code
            ignore_stop_signals()  # torchrun now SIGTERMs every rank: let this line out first
            raise RunError(lost + ("" if unsaved else f"; {keep}, continue by launching the same job with --resume")) from None
        if isinstance(e, (MemoryError, RuntimeError)) and is_out_of_memory(e):
            raise RunError(f"out of memory while training ({first_line(e)[:120]}){oom_hint}; lower data.batch_size "
                           "or the model sizes" + ("" if unsaved else f", then continue with: {command()} train --out "
                                                   f"{run} --resume")) from None
        if isinstance(e, FileError):
            raise RunError(str(e) + ("" if unsaved else "; the run stays resumable with --resume")) from None

    def safe_point(self, dist: Dist | None = None) -> None:
        """Where a requested stop happens: every file on disk is whole and matches ``last.pt``.
        Under torchrun (``dist`` active) every rank stops if any was asked to (a collective)."""
        if dist is not None and dist.active:
            if dist.sum(float(self.stop.signum or 0)):
                raise Interrupted(self.stop.signum or signal.SIGTERM)
        elif self.stop.requested:
            raise Interrupted(self.stop.signum)

    def restore(self, run, state: dict) -> dict:
        """``--resume``: the model, optimizer, strategy, both RNG streams and the loop's ``state``
        as ``last.pt`` holds them, checked to fit this run and its data; the log is cut back to the
        checkpoint (a crash between log line and checkpoint redoes that epoch). ``run`` is the
        ``train.Run`` being resumed."""
        path = self.path
        if not (path / "last.pt").is_file():
            raise RunError(f"{path}: no last.pt to resume from (a run that died before its first epoch is started "
                           "again without --resume)")
        ckpt = load_checkpoint(path / "last.pt", run.device)
        fingerprint = state["data"]
        try:
            run.model.load_state_dict(ckpt["model"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            problem = optimizer_problem(run.optimizer)
            if problem:
                raise ValueError(f"optimizer state: {problem}")
            run.strategy.load_state_dict(ckpt["strategy"])
            torch.set_rng_state(ckpt["rng"])
            run.generator.set_state(ckpt["generator"])
            state.update(ckpt["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"{path / 'last.pt'}: does not fit this run's model and settings ({type(e).__name__}: "
                           f"{first_line(e)[:160]}); start a new run with another --out") from None
        if state.get("data", fingerprint) != fingerprint:  # same settings, other contents: not the run's data
            raise RunError(f"{path}: --resume reads other data than the run started with (the same settings, other "
                           "contents); start a new run with another --out")
        state["data"] = fingerprint
        if state["best_epoch"] >= 0 and not (path / "best.pt").is_file():
            raise RunError(f"{path / 'best.pt'}: missing (the selected epoch's weights); the run cannot be finished, "
                           "start a new one with another --out")
        if self.writes:  # rank 0 alone writes (two ranks rewriting one log raced under torchrun)
            truncate_log(path / "metrics.jsonl", state["epoch"])
        return state

    def log(self, row: dict) -> None:
        if self.writes:
            append_line(self.path / "metrics.jsonl", json.dumps(jsonable(row)))

    def save_best(self, model: torch.nn.Module, epoch: int) -> None:
        if self.writes:
            save_torch(self.path / "best.pt", {"model": model.state_dict(), "epoch": epoch})

    def end_epoch(self, record: dict, checkpoint: dict) -> None:
        """The epoch's log line, then ``last.pt``: a failure between leaves the checkpoint of the
        epoch before, which ``--resume`` continues from (cutting the log back, redoing the epoch)."""
        if self.writes:
            self.log(record)
            self.trackers.epoch(record)
            save_torch(self.path / "last.pt", checkpoint)

    def load_best(self, device, epoch: int) -> dict:
        best = load_checkpoint(self.path / "best.pt", device)
        if best.get("epoch", epoch) != epoch:
            raise RunError(f"{self.path / 'best.pt'}: holds epoch {best.get('epoch')} but the run selected epoch "
                           f"{epoch} (a write was cut short); resume with the run's own train.epochs")
        return best

    def write_results(self, results: dict, here: dict) -> None:
        """``results.json`` with the run's provenance (its first start, every resume, its end)."""
        if self.writes:
            starts = [r["provenance"]["started"] for r in read_log(self.path / "metrics.jsonl") if "provenance" in r]
            results["provenance"] = {**here, "started": starts[0], "resumed": starts[1:], "ended": time_now()}
            write_json(self.path / "results.json", results)
            self.trackers.results(results)


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
