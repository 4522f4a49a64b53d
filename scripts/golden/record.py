"""Record golden numbers from the references' own code (never run in CI; see README.md here).

    python scripts/golden/record.py --refs DIR [--out tests/golden] [--only ogm_ge pmr ...] [--check]

DIR holds one checkout per reference, named as in ``common.REFS``. Each method records in its own
process (the references share module names such as ``models`` and ``utils``). ``--check``
records into a temporary folder and compares byte for byte with ``--out``.
"""
from __future__ import annotations

import argparse
import filecmp
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ["ogm_ge", "pmr", "agm", "mla", "mmpareto", "lfm", "amco", "greedy", "reconboost", "gblending", "opm", "mmcosine", "cml", "valuation", "dnr", "mbsd", "umt", "dgl"]


def one(method: str, refs: Path, out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_default_dtype(torch.float64)  # tensors a reference creates itself are float64 too
    torch.use_deterministic_algorithms(True)
    common = importlib.import_module("common")
    record = importlib.import_module(method).record(refs)
    print(common.write(out, record))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refs", type=Path, required=True)
    p.add_argument("--out", type=Path, default=HERE.parents[1] / "tests" / "golden")
    p.add_argument("--only", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--check", action="store_true", help="re-record into a temporary folder and compare with --out")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        one(a.one, a.refs.resolve(), a.out.resolve())
        return 0
    target = Path(tempfile.mkdtemp()) if a.check else a.out
    target.mkdir(parents=True, exist_ok=True)
    failed = []
    for method in a.only:
        rc = subprocess.run([sys.executable, __file__, "--refs", str(a.refs), "--out", str(target), "--one", method]).returncode
        if rc:
            failed.append(method)
    if a.check:
        for method in a.only:
            same = filecmp.cmp(target / f"{method}.json", a.out / f"{method}.json", shallow=False) \
                if (target / f"{method}.json").exists() and (a.out / f"{method}.json").exists() else False
            print(f"{method}: {'identical' if same else 'DIFFERS'}")
            failed += [] if same else [method]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
