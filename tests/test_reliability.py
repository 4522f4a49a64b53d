"""Hostile and broken inputs through the CLI, in a subprocess as a user runs it: exit code 2, one
line naming the culprit, no traceback, and nothing of the user's written, changed or deleted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.n_train=64", "data.n_val=16", "data.n_test=16", "data.batch_size=32", "model.dim=8",
         "model.hidden=16", "model.seq_len=2"]


def cli(cwd, *args):
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True)
    return p.returncode, p.stderr.strip()


class Hostile:
    """Unpickling this runs a shell command (the attack a --resume must never execute)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_runs_code_hidden_in_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    rc, err = cli(tmp_path, "train", "--quiet", "--epochs", "1", "--out", str(run), *SMALL)
    assert rc == 0, err
    marker = tmp_path / "pwned"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["state"]["extra"] = Hostile(marker)
    torch.save(ckpt, run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    rc, err = cli(tmp_path, "train", "--quiet", "--out", str(run), "--resume", "--epochs", "2")
    assert not marker.exists(), "the checkpoint's code ran"
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "last.pt: refused to load" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 1
