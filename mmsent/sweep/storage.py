"""Where a study lives (SQLite, ``journal:PATH``, PostgreSQL/MySQL) and who ran its trials: a
killed trial of this host is failed on restart, so a study never keeps a trial RUNNING for good."""
from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path


from mmsent.sweep.spec import SweepError


CONNECT_TIMEOUT = 10  # seconds: a server that accepts the connection and never answers is an error, not a hang


def mask_secret(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@host``, ``?password=...``) as ``***``:
    what mmsent prints, logs and records of a storage URL."""
    import re

    url = re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"(?i)((?:password|passwd|pwd)=)[^&;]*", r"\1***", url)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error) with any secret of ``url`` replaced by ``***``."""
    import re

    for secret in re.findall(r"//[^/:@]*:([^@/]+)@", url) + re.findall(r"(?i)(?:password|passwd|pwd)=([^&;]+)", url):
        text = text.replace(secret, "***")
    return text


def make_storage(url: str, heartbeat: int):
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 60}}
        elif url.startswith(("postgresql", "postgres", "mysql")):  # libpq / MySQL drivers: seconds to connect
            kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
        else:
            kwargs = {}
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # the heartbeat is "experimental": said here, not left global
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                    )
            except Exception as e:
                # Workers started together race to create the schema of a new database; the loser
                # sees a constraint error and simply opens what the winner made.
                if attempt == 4 or not any(s in str(e) for s in ("UNIQUE constraint", "already exists", "locked")):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception as e:  # driver missing, host unreachable, bad URL...
        first = (str(e).splitlines() or [""])[0]
        raise SweepError(f"storage {mask_secret(url)!r} is unreachable or invalid: {type(e).__name__}: "
                         f"{scrub(first, url)}") from None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fail_dead_local_trials(study) -> list[int]:
    """Mark FAIL every RUNNING trial whose process ran on this host and is gone (killed, crashed):
    whatever the heartbeat timing, a restart then runs as many trials as are still missing."""
    import optuna

    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        name, _, pid = who.rpartition(":")
        if name == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed
