"""mmsent as a user installs it: the wheel, in a fresh virtualenv, used from an empty folder outside
the checkout (no `cli.py`, no `configs/` beside it): the console script trains with the shipped
recipe, and the shipped sweep specs are found."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "data.batch_size=32", "model.dim=8", "model.hidden=16"]


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_mmsent_trains_from_any_folder(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(ROOT / "mmsent", src / "mmsent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    import importlib.util

    # this environment's setuptools when it has one (no index needed); else pip's isolated build
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("mmsent-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies (torch...) of this environment, read-only; mmsent itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])

    home = tmp_path / "elsewhere"
    home.mkdir()
    where = run([py, "-c", "import mmsent, mmsent.recipes as r; print(mmsent.__file__); print(r.recipe('mosi'));"
                 "print(r.sweep_spec('alpha'))"], cwd=home).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copy, recipes included
    run([venv / "bin" / "mmsent", "train", "--quiet", "--epochs", "1", "--strategy", "dgl", "--out", "run", *SMALL],
            cwd=home)
    res = json.loads((home / "run" / "results.json").read_text())
    assert res["epochs_run"] == 1 and res["config"]["strategy"]["name"] == "dgl" and "acc2_has0" in res["test"]["multi"]
    assert run([venv / "bin" / "mmsent", "--help"], cwd=home).stdout.startswith("usage: mmsent")
    # an installed mmsent is provenance "installed" (no checkout beside it) and its hints say `mmsent`
    assert res["provenance"]["git"] is None and res["provenance"]["command"].startswith("mmsent train")
    hint = subprocess.run([venv / "bin" / "mmsent", "data", "download", "cremad"], cwd=home, capture_output=True, text=True)
    assert hint.returncode == 2 and "run: mmsent data prepare cremad" in hint.stderr, hint.stderr
    assert sorted(p.name for p in home.iterdir()) == ["run"]
