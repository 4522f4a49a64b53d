"""What a run was made with, recorded in ``results.json`` and as a ``{"provenance": ...}`` line of
``metrics.jsonl`` (one when the run starts, one more at every resume): the mmsent version, the
git commit and whether the checkout had uncommitted changes (when mmsent runs from a checkout),
the library versions, the device and dtype, the number of ranks and their backend, the exact
command line and the times. Two runs' numbers can then be told apart by their files alone."""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root when mmsent runs from a checkout


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state(root: Path = CHECKOUT) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout mmsent is imported from; None for an
    installed package (no ``.git`` beside it) or where git is missing."""
    if not (root / ".git").exists():
        return None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout
        return {"commit": run("rev-parse", "HEAD").strip(), "dirty": bool(run("status", "--porcelain").strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device, amp: bool, ddp, command: str | None = None) -> dict:
    """This process's record; ``ddp`` is the run's ``Dist``, ``command`` the command line (default:
    this process's own)."""
    import numpy
    import torch
    import torch.distributed as dist

    from mmsent._version import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"mmsent": __version__, "git": git_state(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "device": str(device), "device_name": name,
            "dtype": "bfloat16 autocast" if amp else "float32",
            "world_size": ddp.world, "backend": dist.get_backend() if ddp.active else None,
            "command": command or shlex.join(sys.argv), "host": platform.node(), "started": now()}
