"""The validation kit every component uses: the errors the CLI prints on one line, range checks for
settings classes, the empty settings, registry lookup, the first line of a library's error, and
the memory sizes are checked against. A leaf module: it imports nothing of mmsent, so a dataset,
fusion or strategy module can use it without importing the config (which imports their registries)."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """Bad configuration; the message names the key or file."""


class RunError(RuntimeError):
    """A run that cannot start or go on (existing run directory, non-finite loss...)."""


class SettingError(ConfigError):
    """A value out of range, raised by a settings class; ``from_dict`` prefixes the section's key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key} {message}")
        self.key, self.message = key, message


def check(key: str, ok: bool, value: Any, need: str) -> None:
    """Range check for a settings ``__post_init__``: ``check("alpha", alpha >= 0, alpha, ">= 0")``."""
    if not ok:
        raise SettingError(key, f"must be {need}, got {value!r}")


@dataclass(frozen=True)
class NoSettings:
    """The settings of a component that has none."""


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def choose(registry: dict, kind: str, name: str):
    """``registry[name]``, or a ``ConfigError`` listing the valid names."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose from {', '.join(sorted(registry))}")
    return registry[name]


def command() -> str:
    """How the user started this program, for the commands a message suggests: ``python cli.py`` from
    a checkout, ``mmsent`` installed, ``python -m mmsent``."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(path) == "mmsent":
        return "mmsent"
    if path.endswith(os.path.join("mmsent", "__main__.py")):
        return "python -m mmsent"
    return "python cli.py"  # a checkout's shim, and a caller such as pytest or a notebook


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 200 characters:
    what a one-line error quotes of a library's many-line one."""
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation that failed (Python's MemoryError, torch's CPU and CUDA allocators)."""
    return isinstance(e, MemoryError) or any(s in str(e) for s in ("can't allocate memory", "out of memory",
                                                                   "not enough memory", "Out of memory"))


def host_memory() -> int | None:
    """This machine's physical memory in bytes (None: unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None

