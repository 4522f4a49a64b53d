import importlib.util
import json
from pathlib import Path

import pytest
import torch

# The checkout's data locations (../shared, when present), set as `python cli.py` sets them: the
# package carries no path of this repository's surroundings.
_cli = importlib.util.spec_from_file_location("checkout_cli", Path(__file__).resolve().parents[1] / "cli.py")
_cli.loader.exec_module(importlib.util.module_from_spec(_cli))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def log_records(path: Path) -> list[dict]:
    """The epoch records of a run's metrics.jsonl (its provenance lines and a half-written last line
    left out), read independently of mmsent's own reader."""
    out = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            out.append(row)
    return out


def logged_epochs(path: Path) -> list[int]:
    return [r["epoch"] for r in log_records(path)]
