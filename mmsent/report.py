"""Aggregate finished runs: test metrics of the selected epoch, mean +- std over seeds."""
from __future__ import annotations

import json
import statistics
from pathlib import Path


def load_results(run_dirs) -> list[dict]:
    out = []
    for d in run_dirs:
        p = Path(d) / "results.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no results.json (unfinished run?)")
        out.append(json.loads(p.read_text()))
    return out


def mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict], split: str = "test") -> dict[str, dict[str, tuple[float, float]]]:
    """branch -> metric -> (mean, std) over the given runs."""
    branches = results[0][split]
    return {
        b: {k: mean_std([r[split][b][k] for r in results]) for k in branches[b]}
        for b in branches
    }
