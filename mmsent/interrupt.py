"""Ctrl-C and ``kill`` (SIGINT, SIGTERM) stop a run at a safe point, never in the middle of a write.

``fit`` runs under ``StopAtSafePoint``: the first signal only raises a flag, which the loop reads
between training steps; it then raises ``Interrupted`` with one line saying what is saved and how
to resume. A second signal stops at once (``KeyboardInterrupt``) -- every write is atomic, so even
that leaves no half-written file. ``Interrupted`` is a ``KeyboardInterrupt``: code that lets
Ctrl-C through (Optuna marks the trial failed and re-raises) lets it through too.

``die_with_parent``: a child process (a table's training run) asks the kernel for SIGTERM when its
parent dies, however it dies (``kill -9`` included), so no orphan goes on writing a run folder.
"""
from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal; ``str`` is the one line to print, ``exit_code`` 128 + the signal number."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0])


class StopAtSafePoint:
    """Context manager: while inside, SIGINT/SIGTERM set ``signum`` (the first) or raise (the second).
    Outside the main thread signals cannot be handled: it then does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now
            raise Interrupted(signum, f"interrupted twice by {signal.Signals(signum).name}; stopped at once")
        self.signum = signum

    def __enter__(self) -> "StopAtSafePoint":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None


def raise_on_sigterm() -> None:
    """Outside a run's safe points, SIGTERM stops like Ctrl-C does: ``Interrupted``, one line."""
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise Interrupted(signum)
        signal.signal(signal.SIGTERM, handler)


def ignore_stop_signals() -> None:
    """A process that is already ending with its one line (a torchrun rank whose peer died, which
    the launcher now SIGTERMs) lets no signal cut that line off."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)


PARENT_ENV = "MMSENT_PARENT_PID"


def die_with_parent() -> None:
    """If started by a table (``MMSENT_PARENT_PID`` set): SIGTERM when that parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``); if it is already gone, exit at once."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the table's own handler stops its children
        return
    if os.getppid() != int(parent):  # the parent died before the request took effect
        os._exit(128 + signal.SIGTERM)
