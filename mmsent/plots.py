"""Figures from run logs (``metrics.jsonl``), after the DGL paper:

* ``grad_norms.png`` (Fig. 1c / 3b): per modality, the norm of the encoder's gradient from its
  unimodal loss and from the multimodal loss over training, one line pair per run;
* ``branch_accuracy.png`` (Fig. 1a/b): per modality, the validation accuracy of that modality's
  branch inside each multimodal run (others zeroed) next to the unimodal-only run(s) of it;
* ``masked_passes.png``: per run, the mean over modalities of each encoder's feature norm and of the
  masked passes' loss on a fixed training batch (the logged diagnostics): how a branch drifts.
"""
from __future__ import annotations

from pathlib import Path

from mmsent.files import FileError, make_dir, read_epochs, read_json, write_atomic
from mmsent.strategies import STRATEGIES


def read_log(run: Path) -> tuple[dict, list[dict]]:
    cfg_path, log_path = run / "config.json", run / "metrics.jsonl"
    if not log_path.is_file():
        raise FileError(f"{log_path}: no metrics.jsonl (not a run directory?)")
    cfg = read_json(cfg_path, "run config") if cfg_path.is_file() else {}
    rows = read_epochs(log_path)
    if not rows:
        raise FileError(f"{log_path}: no epoch logged yet; nothing to plot")
    return cfg, rows


def _one_modality(s: dict):
    """The modality a one-modality run (its strategy class says so) trained, from a stored config:
    flat, or under ``args`` in older run folders; None for any other run."""
    cls = STRATEGIES.get(s.get("name"))
    return s.get("modality", (s.get("args") or {}).get("modality")) if cls is not None and cls.one_modality else None


def _label(run: Path, cfg: dict) -> str:
    s = cfg.get("strategy", {})
    extra = _one_modality(s)
    return f"{run.name} ({s.get('name', '?')}{' ' + extra if extra else ''})"


def _trains_only_another(cfg: dict, m: str) -> bool:
    """A unimodal-only model of another modality: its encoder for ``m`` is never trained."""
    alone = _one_modality(cfg.get("strategy", {}))
    return alone is not None and alone != m


def _finish(fig, ax_row, ylabel: str, path: Path) -> Path:
    """Axis labels on every panel and ONE legend below the panels, never over the curves."""
    seen = {}
    for ax in ax_row:
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return path


def _panels(n: int, n_lines: int):
    """A figure of ``n`` panels in a row. Matplotlib's object API, not pyplot: no global backend or
    figure list is touched, so a caller's own plotting (a notebook's) is left as it was."""
    from matplotlib.figure import Figure

    # room under the panels for the legend: one row per two entries
    fig = Figure(figsize=(4.2 * n, 3.2 + 0.16 * (n_lines + 1) / 2), layout="constrained")
    return fig, fig.subplots(1, n, squeeze=False)


def plot_runs(runs: list[Path], out_dir: Path) -> list[Path]:
    import matplotlib

    logs = {Path(r): read_log(Path(r)) for r in runs}
    make_dir(out_dir)
    written = []
    modalities = []
    for _, log in logs.values():
        for m in log[0]["val"]:
            if m != "multi" and m not in modalities:
                modalities.append(m)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]

    grad_runs = {r: v for r, v in logs.items() if "grad_norm" in v[1][0]}
    if grad_runs:
        fig, axes = _panels(len(modalities), 2 * len(grad_runs))
        for ax, m in zip(axes[0], modalities):
            for i, (run, (cfg, log)) in enumerate(grad_runs.items()):
                if _trains_only_another(cfg, m):
                    continue
                ep = [r["epoch"] for r in log if m in r.get("grad_norm", {})]
                c = colors[i % len(colors)]
                ax.plot(ep, [r["grad_norm"][m]["unimodal"] for r in log if m in r.get("grad_norm", {})], "-", color=c,
                        label=f"{_label(run, cfg)}: unimodal loss")
                ax.plot(ep, [r["grad_norm"][m]["multimodal"] for r in log if m in r.get("grad_norm", {})], "--",
                        color=c, label=f"{_label(run, cfg)}: multimodal loss")
            ax.set_title(f"{m} encoder")
            ax.set_yscale("log")
        written.append(_finish(fig, axes[0], "gradient norm (log scale)", out_dir / "grad_norms.png"))

    diag_runs = {r: v for r, v in logs.items() if "diag" in v[1][0]}
    if diag_runs:
        fig, axes = _panels(2, len(diag_runs))
        for i, (run, (cfg, log)) in enumerate(diag_runs.items()):
            c = colors[i % len(colors)]
            mods = [m for m in log[0]["diag"] if m != "multi"]
            for ax, key in zip(axes[0], ("feat_norm", "loss")):
                ax.plot([r["epoch"] for r in log], [sum(r["diag"][m][key] for m in mods) / len(mods) for r in log],
                        "-", color=c, label=_label(run, cfg))
        axes[0][0].set_title("encoder feature norm (mean over modalities)")
        axes[0][1].set_title("masked-pass loss (mean over modalities)")
        axes[0][0].set_yscale("log")
        written.append(_finish(fig, axes[0], "on a fixed training batch", out_dir / "masked_passes.png"))

    fig, axes = _panels(len(modalities), len(logs))
    metric = "acc"
    for ax, m in zip(axes[0], modalities):
        for i, (run, (cfg, log)) in enumerate(logs.items()):
            if m not in log[0]["val"] or _trains_only_another(cfg, m):
                continue
            metric = "acc2_has0" if "acc2_has0" in log[0]["val"][m] else "acc"
            style = ":" if _one_modality(cfg.get("strategy", {})) is not None else "-"
            ax.plot([r["epoch"] for r in log], [r["val"][m][metric] for r in log], style, color=colors[i % len(colors)],
                    label=_label(run, cfg))
        ax.set_title(f"{m} branch (others zeroed)")
    label = "validation Acc-2 (has0)" if metric == "acc2_has0" else "validation accuracy"
    written.append(_finish(fig, axes[0], label, out_dir / "branch_accuracy.png"))
    return written
