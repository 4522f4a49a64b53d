"""``cli.py data download mosi|mosei``: fetch the ``.csd`` files named by an installed CMU SDK.

The SDK (``mmsdk``, installed from its source repository; not on PyPI) is used only for its recipe
of URLs (``mmdatasdk.cmu_mosi.raw / highlevel / labels``). Its own ``deploy()`` asks questions on
stdin, so files are fetched here: one per modality that ``data prepare`` reads, each written to a
temporary name and renamed when complete, so a re-run resumes and never keeps a partial file.
"""
from __future__ import annotations

import fnmatch
import importlib
import os
import shutil
import urllib.request
from pathlib import Path

from mmsent.checks import command
from mmsent.data.batch import DataError
from mmsent.data.csd import FILE_PATTERNS

TIMEOUT_S = 20


def recipe_urls(dataset: str) -> dict[str, str]:
    """Modality key (as ``find_files``) -> URL, taken from the installed SDK's recipes."""
    hint = (f"get the .csd files by hand and run: {command()} data prepare {dataset} csd_dir=DIR out=FILE")
    try:
        sdk = importlib.import_module("mmsdk.mmdatasdk")
    except ImportError:
        raise DataError(f"{dataset}: automatic download needs the official CMU Multimodal SDK (mmsdk, installed "
                        f"from its source repository; it is not on PyPI) and network access; otherwise {hint}") from None
    module = getattr(sdk, f"cmu_{dataset}", None)
    recipes = [getattr(module, name, {}) for name in ("raw", "highlevel", "labels")] if module else []
    urls = [u for r in recipes if isinstance(r, dict) for u in r.values() if isinstance(u, str)]
    chosen = {}
    for key, patterns in FILE_PATTERNS.items():  # the same first-match order data prepare uses
        for pat in patterns:
            hit = next((u for u in urls if fnmatch.fnmatch(u.rsplit("/", 1)[-1], pat)), None)
            if hit:
                chosen[key] = hit
                break
    missing = [k for k in ("words", "audio", "vision", "labels") if k not in chosen]
    if missing:
        raise DataError(f"mmsdk: its {dataset} recipe names no .csd for {', '.join(missing)}; {hint}")
    return chosen


def download(dataset: str, out_dir: Path, progress=None) -> list[Path]:
    """Fetch every file of ``recipe_urls`` into ``out_dir``; files already there are kept."""
    urls = recipe_urls(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, url in enumerate(urls.values()):
        dest = out_dir / url.rsplit("/", 1)[-1]
        if not dest.is_file():
            tmp = dest.with_name(dest.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f)
            except (OSError, ValueError) as e:  # URLError, timeouts and HTTP errors are OSErrors
                tmp.unlink(missing_ok=True)
                raise DataError(f"{url}: download failed ({e}); the CMU server is often down: get the .csd files "
                                f"by hand and run: {command()} data prepare {dataset} csd_dir={out_dir} "
                                "out=FILE") from None
            os.replace(tmp, dest)
        written.append(dest)
        if progress:
            progress(i + 1, len(urls))
    return written
