"""What a sweep leaves: its trials as rows, the best trial, its values written into a config, a
plot of the objective against the parameter and a markdown record."""
from __future__ import annotations

from pathlib import Path

import yaml

from mmsent.config import load_yaml, set_dotted
from mmsent.files import make_dir, write_atomic, write_text
from mmsent.sweep.spec import SweepError, SweepSpec
from mmsent.tasks import task_of


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name, **t.params, "value": t.value,
                     "val_per_seed": t.user_attrs.get("val_per_seed"), "test": t.user_attrs.get("test"),
                     "error": t.user_attrs.get("error")})
    return rows


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:
        return None


def apply_best(study, path: str | Path) -> dict:
    """Write the best trial's parameters into the YAML config at ``path`` (keys are dotted)."""
    best = best_trial(study)
    if best is None:
        raise SweepError("no completed trial yet; nothing to apply")
    path = Path(path)
    tree = load_yaml(path) if path.is_file() else {}
    for key, value in best.params.items():
        set_dotted(tree, key, value)
    write_text(path, yaml.safe_dump(tree, sort_keys=False))
    return best.params


def plot(study, spec: SweepSpec, path: str | Path) -> Path | None:
    """Objective vs the first parameter: one dot per seed, the mean as a line."""
    from matplotlib.figure import Figure  # the object API: no global backend or pyplot state touched

    key = spec.params[0].name
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE" and key in t.params), key=lambda t: t.params[key])
    if not done:
        return None
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for t in done:
        seeds = t.user_attrs.get("val_per_seed") or [t.value]
        ax.scatter([t.params[key]] * len(seeds), seeds, s=12, alpha=0.5, color="tab:blue")
    ax.plot([t.params[key] for t in done], [t.value for t in done], "o-", color="tab:red", label="mean over seeds")
    if spec.params[0].log:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(f"validation {spec.metric}")
    ax.set_title(f"{study.study_name}: {len(done)} trials")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    make_dir(path.parent)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return path


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def write_report(study, spec: SweepSpec, path: Path, command: str, png) -> None:
    """Markdown record of a sweep: the command, every trial, the best value."""
    keys = [p.name for p in spec.params]
    rows = trial_rows(study)
    # the task's own first two summary metrics (its headline among them)
    tested = next(((r["test"] or {}).get("multi") for r in rows if (r["test"] or {}).get("multi")), {})
    task = task_of(tested)
    shown = (task.headline, next(m for m in task.shown if m != task.headline)) if task else ("acc", "f1")
    lines = [f"# Sweep `{study.study_name}`", "", f"Command: `{command}`", "",
             f"Objective: validation `{spec.metric}` of the multimodal model ({spec.direction}), mean over seeds "
             f"{spec.seeds}; test metrics are recorded, never optimised.", "",
             "| trial | state | " + " | ".join(keys) + f" | val {spec.metric} (mean) | val per seed | test {shown[0]} | test {shown[1]} |",
             "|---|---|" + "---|" * (len(keys) + 4)]
    for r in rows:
        test = (r["test"] or {}).get("multi", {})
        seeds = ", ".join(f"{v:.4f}" for v in r["val_per_seed"] or [])
        lines.append(f"| {r['number']} | {r['state'].lower()} | " + " | ".join(fmt(r.get(k)) for k in keys)
                     + f" | {fmt(r['value'])} | {seeds} | {fmt(test.get(shown[0]))} | {fmt(test.get(shown[1]))} |")
    best = best_trial(study)
    if best is not None:
        lines += ["", f"Best: {best.params} with validation {spec.metric} {best.value:.4f}."]
    if png:
        lines += ["", f"![objective vs parameter]({Path(png).name})"]
    make_dir(path.parent)
    write_text(path, "\n".join(lines) + "\n")
