"""Every file mmsent writes or reads back, in one place, so that each failure is one line.

* Writes are atomic (a temporary file beside the target, then ``os.replace``). A write that fails
  (disk full, quota, file-size limit, I/O error, read-only disk) removes its temporary file and
  raises ``FileError`` naming the path, the reason and the free space left: it never leaves a
  half-written file, nor a temporary file that keeps the disk full.
* Appends (``metrics.jsonl``) go in one ``write``; a failed one is cut back to the old length.
* Reads of files mmsent wrote (``results.json``, ``config.json``, ``metrics.jsonl``) check what they
  read and name the file and line when it is not what mmsent writes.
* ``RunLock``: one writer per run folder (an ``flock`` on ``<run>/.lock``, which the kernel releases
  when its holder dies, however it dies: a stale lock is taken over without any guessing).

A leaf module: it imports nothing of mmsent, so every other module can use it.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path


class FileError(RuntimeError):
    """A file that cannot be written or read as mmsent needs it; the CLI prints it on one line, exit 2."""


def free_space(path: Path) -> str:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent), human-readable."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown free space"
    for unit in ("B", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""  # pragma: no cover


def write_failed(path: Path, e: OSError) -> FileError:
    reason = e.strerror or type(e).__name__
    # What to do depends on why: space (disk or quota full, a file-size limit) or anything else
    # (permissions, a read-only filesystem, an I/O error), where freeing space would not help.
    space = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    fix = "free some space or pass another folder" if space else "pass another folder (or fix this one)"
    return FileError(f"{path}: cannot write ({reason}; {free_space(path)} on its filesystem); "
                     f"{fix}, then run the same command again")


def make_dir(path: Path) -> Path:
    """``mkdir -p``, a failure (full disk, permissions) reported like every failed write."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(path, e) from None
    return path


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def write_atomic(path: Path, write) -> Path:
    """``write(tmp_path)`` then rename onto ``path``; on any failure the temporary file is removed."""
    path = Path(path)
    # the writer's own temporary name: two processes writing one file (two sweep workers' plot)
    # must not rename each other's half-written file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        if tmp.is_symlink():  # never write through a link this process did not make
            tmp.unlink()
        write(tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated file under ``path``
    except OSError as e:
        _unlink(tmp)
        raise write_failed(path, e) from None
    except BaseException:  # an interrupt mid-write: no temporary file left behind either
        _unlink(tmp)
        raise
    return path


def claim_folder(folder: Path, kind: str, named_by: str, layout: frozenset = frozenset(),
                 required: frozenset = frozenset()) -> Path:
    """An output folder a command may write into: new, empty, or already its own kind -- marked by
    the file ``.mmsent-<kind>`` written here, or (a folder made before the mark existed) holding
    nothing but ``layout`` entries, ``required`` among them. Anything else is a user's folder: one
    line, nothing written. A symlinked folder is refused too (a write must not follow a link it did
    not make)."""
    folder = Path(folder)
    mark = folder / f".mmsent-{kind}"
    if folder.is_symlink():
        raise FileError(f"{folder}: {named_by} names a symbolic link; pass a real (new or empty) folder")
    if folder.exists() and not folder.is_dir():
        raise FileError(f"{folder}: {named_by} names a file, not a folder; pass a new or empty folder")
    if folder.is_dir() and not mark.is_file():
        names = {p.name for p in folder.iterdir()}
        if names and not (layout and names <= layout and required <= names):
            shown = ", ".join(sorted(names)[:3]) + (" ..." if len(names) > 3 else "")
            raise FileError(f"{folder}: {named_by} names a folder holding other files ({shown}), not one this "
                            f"command made; pass a new or empty folder")
    make_dir(folder)
    if not mark.is_file():
        write_text(mark, f"made by mmsent ({kind}); this command may write here again\n")
    return folder


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


class _Recorder:
    """A file wrapper that keeps what stopped a write -- an ``OSError`` (a full disk) or an interrupt
    (a second SIGTERM raises in the signal handler mid-write): ``torch.save`` turns either into a
    ``RuntimeError`` ("unexpected pos ...", an ``inline_container`` trace) that no longer says why."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b):
        try:
            return self.f.write(b)
        except BaseException as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def save_torch(path: Path, obj) -> Path:
    """``torch.save`` atomically, a full disk reported as such."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            rec = _Recorder(f)
            try:
                torch.save(obj, rec)
            except BaseException:
                if rec.error is not None:
                    raise rec.error from None
                raise

    return write_atomic(path, write)


def jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN (Pearson r of a constant prediction)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append ``line`` + newline in one write; a failed append is cut back, never left half-written."""
    path = Path(path)
    data = (line + "\n").encode()
    try:
        with open(path, "ab") as f:
            size = f.tell()
            try:
                f.write(data)
                f.flush()
            except OSError:
                f.truncate(size)
                raise
    except OSError as e:
        raise write_failed(path, e) from None


def _read_text(path: Path, what: str, fix: str = "") -> str:
    """The text of a file mmsent reads back; missing or unreadable -> one-line FileError."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise FileError(f"{path}: not found{fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: cannot read this {what} ({getattr(e, 'strerror', None) or e}){fix}") from None


def read_json(path: Path, what: str = "file", fix: str = "") -> dict:
    """A JSON object mmsent wrote; missing, unreadable, not JSON or not an object -> one-line FileError."""
    path = Path(path)
    text = _read_text(path, what, fix)
    try:
        tree = json.loads(text)
    except ValueError as e:  # not JSON, or an integer longer than Python converts
        raise FileError(f"{path}: damaged {what}, not valid JSON ({str(e)[:120]}){fix}") from None
    except RecursionError:
        raise FileError(f"{path}: damaged {what}, nested too deeply to be mmsent's{fix}") from None
    if not isinstance(tree, dict):
        raise FileError(f"{path}: damaged {what}, not a JSON object{fix}")
    return tree


def bad_number(tree, where: str = "") -> str | None:
    """The path of the first leaf of ``tree`` that is neither a number nor null (the metrics mmsent
    writes), or None when they all are."""
    if isinstance(tree, dict):
        return next((b for k, v in tree.items() if (b := bad_number(v, f"{where}.{k}" if where else str(k)))), None)
    if isinstance(tree, list):
        return next((b for i, v in enumerate(tree) if (b := bad_number(v, f"{where}[{i}]"))), None)
    ok = tree is None or (isinstance(tree, (int, float)) and not isinstance(tree, bool))
    return None if ok else f"{where} = {tree!r:.40}"


def read_log(path: Path, what: str = "metrics log", partial_tail: bool = True) -> list[dict]:
    """Every record of a one-object-per-line log, in order: epoch records and the provenance lines
    (``{"provenance": ...}``, written when a run starts or resumes). A last line cut short (a crash or
    a full disk mid-append) is dropped when ``partial_tail``; any other line that is neither is an
    error naming the file and line."""
    path = Path(path)
    lines = _read_text(path, what).splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, a huge integer, nesting beyond recursion
            row = None
        epoch = isinstance(row, dict) and isinstance(row.get("epoch"), int) and isinstance(row.get("val"), dict)
        if not epoch and not (isinstance(row, dict) and isinstance(row.get("provenance"), dict)):
            if partial_tail and i == len(lines):
                break  # an append that died half-way: that epoch is redone on resume
            raise FileError(f"{path}: line {i} is not an epoch record of mmsent's {what} ({line[:60]!r})")
        wrong = bad_number({k: v for k, v in row.items() if k != "provenance"}) if epoch else None
        if wrong:  # every value of an epoch record is a number (or null): plots and reports read them
            raise FileError(f"{path}: line {i}: {wrong} is not a number; not mmsent's {what}")
        out.append(row)
    return out


def read_epochs(path: Path, what: str = "metrics log", partial_tail: bool = True) -> list[dict]:
    """The epoch records of a log (``read_log`` less its provenance lines)."""
    return [r for r in read_log(path, what, partial_tail) if "provenance" not in r]


class LockHeld(FileError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock`` for the life of a run. The file records who holds it
    (PID, host, start time, command) so that a refused second writer can say whom it waits for. The
    kernel drops the lock when the holder exits or is killed, so a lock file left by a dead process
    is simply taken over."""

    NAME = ".lock"

    def __init__(self, run: Path):
        self.path = Path(run) / self.NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:  # O_NOFOLLOW: a lock file that is a symlink (to a user's file) is never written through
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FileError(f"{self.path}: is a symbolic link, not the run's lock file; mmsent does not write "
                                "through links (remove it, or pass another --out)") from None
            raise write_failed(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockHeld(f"{self.path.parent}: another mmsent process is writing this run ({holder}); wait for it "
                           "to finish or stop it, or pass another --out") from None
        except OSError as e:  # a filesystem without locks: say so rather than run unguarded in silence
            os.close(fd)
            raise FileError(f"{self.path}: cannot lock the run folder ({e.strerror}); put runs on a local disk") from None
        who = (f"PID {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
               + " ".join(sys.argv[:6])[:200])
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (who + "\n").encode(), 0)
        except OSError:
            pass  # the lock holds without the note; a full disk must not stop a run that can still save
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None
