"""Aggregate finished runs: test metrics of the selected epoch, mean +- std over seeds."""
from __future__ import annotations

import statistics
from pathlib import Path

from mmsent.files import FileError, bad_number, read_json
from mmsent.tasks import percent, shown_metrics, task_of  # noqa: F401  (percent: table.py formats with it)


def load_results(run_dirs) -> list[dict]:
    """The ``results.json`` of each run; a missing or damaged one is a one-line ``FileError``."""
    out = []
    for d in run_dirs:
        p = Path(d) / "results.json"
        if not p.is_file():
            raise FileError(f"{p}: no results.json (unfinished run?)")
        out.append(read_results(p))
    return out


def read_results(p: Path) -> dict:
    """One ``results.json``, checked where it enters (report, table and predict read only what this
    let through): test and val each a non-empty mapping of branches, each a non-empty mapping of
    numbers; provenance, if any, a mapping whose git record is a commit string and a dirty flag."""
    res = read_json(p, "results file", "; re-run the run with --resume to write it again")
    if not all(isinstance(res.get(k), dict) and res[k] for k in ("test", "val")):
        raise FileError(f"{p}: not an mmsent results file (no 'test' and 'val' metrics)")
    wrong = bad_number({k: res[k] for k in ("test", "val")})
    if wrong or not all(isinstance(b, dict) and b for k in ("test", "val") for b in res[k].values()):
        raise FileError(f"{p}: {wrong or 'a branch'} is not a number (or a branch is not a non-empty mapping of "
                        "metrics); not an mmsent results file")
    prov = res.get("provenance")
    git = prov.get("git") if isinstance(prov, dict) else None
    if not (prov is None or isinstance(prov, dict) and (git is None or isinstance(git, dict)
            and isinstance(git.get("commit"), str) and isinstance(git.get("dirty"), bool))
            and isinstance(prov.get("world_size", 1), int) and isinstance(prov.get("resumed", []), list)):
        raise FileError(f"{p}: its provenance record is damaged (not a mapping with git commit/dirty, world_size "
                        "and resumed of their types); not an mmsent results file")
    return res


def check_comparable(run_dirs, results: list[dict], split: str = "test") -> None:
    """Runs summarised together must score the same branches with the same metrics; one line naming
    the first run that does not (a MOSI run beside an audio-visual one) instead of a KeyError."""
    shape = lambda r: {b: sorted(m) for b, m in r[split].items()}  # noqa: E731
    for d, r in zip(run_dirs, results):
        if shape(r) != shape(results[0]):
            raise FileError(f"{d}: its branches or metrics ({', '.join(r[split])}) differ from {run_dirs[0]}'s "
                            f"({', '.join(results[0][split])}); report runs of one task and data together")


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


def summarize_probes(results: list[dict], split: str = "test") -> dict[str, dict[str, tuple[float, float]]]:
    """modality -> metric -> (mean, std) of the encoder probes (runs without probes: empty)."""
    if any("probe" not in r for r in results):
        return {}
    probes = results[0]["probe"]
    # a probe that could not be fitted in some run ({"skipped": why}) is left out, not averaged
    fitted = [m for m in probes if all(split in r["probe"].get(m, {}) for r in results)]
    return {m: {k: mean_std([r["probe"][m][split][k] for r in results]) for k in probes[m][split]} for m in fitted}



def _console():
    from rich.console import Console

    return Console()


def print_results(results: dict) -> None:
    """One run's test metrics per branch (what ``cli.py train`` prints at the end)."""
    from rich.table import Table

    multi = results["test"]["multi"]
    names = shown_metrics(multi)
    table = Table(title=f"test metrics at best validation epoch {results['best_epoch']} ({results['run_dir']})")
    table.add_column("branch")
    for n in names:
        table.add_column(n, justify="right")
    probes = results.get("probe", {})
    rows = {**results["test"], **{f"probe {m}": v["test"] for m, v in probes.items() if "test" in v}}
    for branch, metrics in rows.items():
        table.add_row(branch, *(f"{metrics[n]:.3f}" if metrics.get(n) is not None else "-" for n in names))
    _console().print(table)
    for m, v in probes.items():
        if "skipped" in v:
            _console().print(f"probe {m}: skipped ({v['skipped']})")


def cell(metric: str, mean: float, std: float) -> str:
    """Accuracy-like metrics in percent, the others as they are."""
    if percent(metric):
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.3f} ± {std:.3f}"


def print_summary(results: list[dict], split: str, metrics: list[str] | None = None) -> None:
    """Mean ± std over runs, one row per branch (``cli.py report``); ``metrics``: the columns
    (default: every metric of the runs' task but the loss)."""
    from rich.table import Table

    summary = summarize(results, split)
    summary.update({f"probe {m}": v for m, v in summarize_probes(results, split).items()})
    first = next(iter(summary.values()))
    task = task_of(first)
    names = [n for n in (metrics or (task.metric_names if task else first)) if n in first and (metrics or n != "loss")]
    table = Table(title=f"{split} metrics at the validation-selected epoch, mean ± std over {len(results)} runs")
    table.add_column("branch")
    for n in names:
        table.add_column(n, justify="right")
    for branch, values in summary.items():
        table.add_row(branch, *(cell(n, *values[n]) for n in names))
    _console().print(table)


def describe_provenance(p: dict | None) -> str:
    """One line of what a run was made with (runs from before provenance was recorded: say so)."""
    if not p:
        return "made with: not recorded (the run predates provenance records)"
    git = p.get("git")
    code = f"mmsent {p.get('mmsent')}" + (f" at {git['commit'][:10]}{' + uncommitted changes' if git['dirty'] else ''}"
                                           if git else " (installed)")
    ranks = f"{p['world_size']} ranks ({p['backend']})" if p.get("world_size", 1) > 1 else "1 process"
    resumed = f", resumed {len(p['resumed'])}x" if p.get("resumed") else ""
    return (f"made with: {code}; python {p.get('python')}, torch {p.get('torch')}, numpy {p.get('numpy')}; "
            f"{p.get('device')} ({p.get('device_name')}), {p.get('dtype')}, {ranks}; {p.get('started')} to "
            f"{p.get('ended')}{resumed}; command: {p.get('command')}")


def print_provenance(run_dirs, results: list[dict]) -> None:
    """``cli.py report``: each run's provenance line, under its folder."""
    for d, r in zip(run_dirs, results):
        _console().print(f"{d}: {describe_provenance(r.get('provenance'))}", highlight=False, soft_wrap=True)
