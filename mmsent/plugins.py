"""Components from outside mmsent: a module that adds datasets, fusion heads, encoders, strategies or
tasks to the registries (one registry line each, as mmsent's own do) is loaded by name, so every
process of a command sees the same registries -- `cli.py table`'s and torchrun's child runs, a
sweep's trials, `python -m mmsent`:

* ``$MMSENT_PLUGINS``: importable module names, comma-separated (a lab's code on ``PYTHONPATH``);
* installed packages' entry points in the group ``mmsent.plugins`` (each names a module).

Importing a module runs its code: that is what naming it asks for. Nothing else mmsent reads (data,
configs, run folders, checkpoints) ever runs code."""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from mmsent.checks import ConfigError, first_line

GROUP = "mmsent.plugins"
_loaded: list[str] = []


def plugin_modules() -> list[str]:
    named = [m.strip() for m in os.environ.get("MMSENT_PLUGINS", "").split(",") if m.strip()]
    return named + [ep.value.split(":")[0] for ep in entry_points(group=GROUP)]


def load_plugins() -> list[str]:
    """Import every plug-in module once; a module that cannot be imported is one line naming it."""
    for name in plugin_modules():
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (a user's module may fail in any way: one line names it)
            raise ConfigError(f"plug-in {name!r} ($MMSENT_PLUGINS or entry point group {GROUP}) cannot be "
                              f"imported: {type(e).__name__}: {first_line(e)}") from None
        _loaded.append(name)
    return list(_loaded)
