"""The command line: ``mmsent train [...]`` (the console script), ``python -m mmsent ...`` and, in a
checkout, ``python cli.py ...``. Parsing only; the work is in the modules it calls."""
from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
from pathlib import Path

from mmsent.checks import ConfigError, command

def cmd_train(args) -> int:
    from mmsent.distributed import Dist
    from mmsent.recipes import train_config
    from mmsent.report import print_results
    from mmsent.train import prepare, train

    cfg = train_config(dataset=args.dataset, data=args.data, config=args.config, fusion=args.fusion,
                       strategy=args.strategy, alpha=args.alpha, seed=args.seed, epochs=args.epochs, out=args.out,
                       device=args.device, overrides=args.overrides, resume=args.resume)
    run = prepare(cfg, resume=args.resume, quiet=args.quiet, command_line=f"{command()} {shlex.join(args.argv)}",
                  planning=args.dry_run)
    if args.dry_run:
        results = run.plan()
        c, d = results["config"], results["data"]
        print(f"dry run (nothing written): would {'resume' if args.resume else 'train'} {results['run_dir']}: dataset "
              f"{c['data']['dataset']} ({', '.join(f'{k} {v}' for k, v in results['sizes'].items())}; {d['task']}; "
              f"modalities {', '.join(f'{m} {w}' for m, w in d['dims'].items())}), fusion {c['model']['fusion']} "
              f"({results['parameters']:,} parameters), strategy {c['strategy']['name']} "
              f"{ {k: v for k, v in c['strategy'].items() if k not in ('name', 'presets')} or ''}"
              f"".rstrip() + f", {c['train']['epochs']} epochs of {results['steps_per_epoch']} steps, seed {c['seed']}")
        return 0
    results = train(run)
    if Dist().is_main:  # under torchrun rank 0 alone reports
        print_results(results)
    return 0


def cmd_sweep(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mmsent.recipes import recipe
    from mmsent.sweep import Sweep, apply_best, best_trial, fmt, load_spec, plot, trial_rows, write_report

    console = Console()
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials takes the number of finished trials the study should hold, >= 1, got {args.trials}")
    if args.heartbeat is not None and args.heartbeat < 1:
        raise ConfigError(f"--heartbeat takes seconds >= 1, got {args.heartbeat}")
    spec = load_spec(args.name)
    overrides = [(k, v) for k, v in (("data.dataset", args.dataset), ("data.path", args.data)) if v is not None]
    shipped = recipe(args.dataset) if args.dataset else None
    config = args.config or (str(shipped) if shipped else None)
    if args.heartbeat:  # a copy: the loaded spec stays what its file says
        spec = dataclasses.replace(spec, heartbeat=args.heartbeat)
    sweep = Sweep(spec, config=config, overrides=overrides + list(args.overrides), storage=args.storage,
                  study=args.study, trials=args.trials, out_dir=args.out_dir, planning=args.dry_run)
    console.print(f"study {sweep.study_name!r} in {sweep.storage_shown}: {sweep.trials} trials x seeds {spec.seeds}, "
                  f"{spec.direction} validation {spec.metric}")
    if args.dry_run:  # the spec, its space, the base config and the data are checked: stop before the storage
        console.print("dry run (nothing written): would search " + "; ".join(
            f"{p.name} in {p.choices or p.grid or f'[{p.low}, {p.high}]'}" for p in spec.params))
        return 0
    study = sweep.run(progress=console.print, worker=args.worker)
    from mmsent.tasks import shown_metrics, task_of

    table = Table(title=f"{sweep.study_name}: trials")
    keys = [p.name for p in spec.params]
    for col in ["#", "state", *keys, f"val {spec.metric}", "seed spread", "test headline (multi)", "error"]:
        table.add_column(col)
    for r in trial_rows(study):
        seeds = r["val_per_seed"] or []
        spread = f"{min(seeds):.4f}..{max(seeds):.4f}" if seeds else ""
        test = r["test"]["multi"] if r["test"] else {}
        task = task_of(test)
        head = test.get(task.headline) if task else None
        table.add_row(str(r["number"]), r["state"].lower(), *(fmt(r.get(k)) for k in keys),
                      "" if r["value"] is None else f"{r['value']:.4f}", spread,
                      "" if head is None else f"{head:.4f}", (r["error"] or "")[:60])
    console.print(table)
    best = best_trial(study)
    if best is None:
        console.print("no completed trial")
        return 1
    test = best.user_attrs.get("test", {}).get("multi", {})
    console.print(f"best: {best.params}  validation {spec.metric} {best.value:.4f}  test "
                  + "  ".join(f"{k} {test[k]:.4f}" for k in shown_metrics(test)))
    png = plot(study, spec, args.plot or sweep.out_dir / f"{sweep.study_name}.png")
    if png:
        console.print(f"plot: {png}")
    if args.apply:
        console.print(f"wrote {apply_best(study, args.apply)} into {args.apply}")
    if args.report:
        write_report(study, spec, Path(args.report), f"{command()} {shlex.join(args.argv)}", png)
        console.print(f"report: {args.report}")
    return 0


def cmd_report(args) -> int:
    from mmsent.report import check_comparable, load_results, print_provenance, print_summary

    results = load_results(args.runs)  # a missing or damaged results.json: FileError, one line
    check_comparable(args.runs, results, args.split)
    print_summary(results, args.split, args.metrics.split(",") if args.metrics else None)
    print_provenance(args.runs, results)
    return 0


def cmd_table(args) -> int:
    from mmsent.table import BASELINE, choose_rows, reference_runs, run_table, slug, write_table

    dataset = args.dataset
    override = lambda m: re.match(r"^[A-Za-z_][\w.]*=", m) is not None  # noqa: E731  (else a row, maybe 'LABEL:k=v')
    args.overrides += [s for s in args.seeds if override(s)]  # nargs="+" swallows overrides after --seeds too
    try:
        args.seeds = [int(s) for s in args.seeds if not override(s)]
    except ValueError:
        print(f"error: --seeds takes integers, got {' '.join(args.seeds)}", file=sys.stderr)
        return 2
    if args.methods:  # nargs="+" also swallows key=value overrides written after --methods
        args.overrides += [m for m in args.methods if override(m)]
        args.methods = [m for m in args.methods if not override(m)]
    runs_dir = Path(args.runs_dir or f"runs/table/{dataset}")
    if args.jobs < 1:
        print(f"error: --jobs takes a number of parallel runs >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    if args.update and not args.dry_run:  # before any training: an update needs the table it updates
        stem = args.name or f"{dataset}_table"
        md, csv_path = Path(args.out) / f"{stem}.md", Path(args.out) / f"{stem}.csv"
        if not (md.is_file() and csv_path.is_file()):
            print(f"error: --update needs the table to update: {md} and {csv_path} (make it without --update first)",
                  file=sys.stderr)
            return 2
    if args.drop and not args.update:
        print("error: --drop removes rows from an existing table: use it with --update", file=sys.stderr)
        return 2
    if args.update and args.drop and not args.methods:  # only removing rows: nothing to train
        from mmsent.table import update_table

        if args.dry_run:
            print(f"dry run (nothing written): would remove rows {', '.join(args.drop)} from the table")
            return 0
        stem = args.name or f"{dataset}_table"
        md, csv_path = Path(args.out) / f"{stem}.md", Path(args.out) / f"{stem}.csv"
        if not (md.is_file() and csv_path.is_file()):
            print(f"error: --update needs the table to update: {md} and {csv_path}", file=sys.stderr)
            return 2
        update_table(md, csv_path, None, None, f"{command()} {shlex.join(args.argv)}", [], args.drop)
        print(md.read_text())
        return 0
    try:
        if args.reference:  # before any training: a reference is a row here or has finished runs
            rows = choose_rows(dataset, args.data, args.methods, args.overrides, args.config)
            reference_runs([label for label in args.reference if label not in rows], {}, runs_dir, args.seeds)
        dirs = run_table(dataset=dataset, data=args.data, seeds=args.seeds, runs_dir=runs_dir, jobs=args.jobs,
                         methods=args.methods, overrides=args.overrides, config=args.config, dry_run=args.dry_run)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    line = f"{command()} {shlex.join(args.argv)}"
    # an --update re-making some rows compares them with the baseline's finished runs, if there are any
    baseline = args.update and BASELINE not in dirs and any((runs_dir / f"{slug(BASELINE)}-s{s}").is_dir() for s in args.seeds)
    wanted = [*([BASELINE] if baseline else []), *(args.reference or [])]
    try:
        references = reference_runs(wanted, dirs, runs_dir, args.seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.update:  # only these rows are re-made: merge them into the committed table
        import tempfile

        from mmsent.table import update_table

        stem = args.name or f"{dataset}_table"
        md, csv_path = Path(args.out) / f"{stem}.md", Path(args.out) / f"{stem}.csv"
        if not (md.is_file() and csv_path.is_file()):
            print(f"error: --update needs the table to update: {md} and {csv_path}", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            new_md, new_csv = write_table(dirs, Path(tmp), dataset, line, stem, references)
            update_table(md, csv_path, new_md, new_csv, line, list(dirs), args.drop or ())
    else:
        md, csv_path = write_table(dirs, Path(args.out), dataset, line, args.name, references)
    print(md.read_text())
    print(f"wrote {md} and {csv_path}")
    return 0


def cmd_plot(args) -> int:
    from mmsent.plots import plot_runs

    paths = plot_runs([Path(r) for r in args.runs], Path(args.out))  # a damaged log: FileError, one line
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_predict(args) -> int:
    from mmsent.predict import load_run
    from mmsent.predictions import write_predictions

    run = load_run(args.run, args.data, args.device)  # bad run or data: one line
    if not run.task.tabular:  # per-pixel maps are not rows of a CSV
        raise ConfigError(f"{args.run}: a segmentation run's predictions are label maps, not a per-sample table; "
                          "use mmsent.load_run(RUN).predict(batch) for a batch's (B, K, H, W) logits")
    split = getattr(run.dataset, args.split)
    preds = run.predictions(split)
    out = write_predictions(Path(args.out), split, preds, run.task)
    print(f"wrote {out}: {len(split)} {args.split} samples, predictions of multi and {', '.join(run.model.modalities)}")
    if run.results and not args.data and args.split == "test":  # the run's own test split: what it scored
        metric = run.task.headline
        now, then = run.task.metrics(preds["multi"], split.y)[metric], run.results["test"].get("multi", {}).get(metric)
        if then is None:  # a results file of another shape (checked to hold numbers, not which ones)
            print(f"warning: results.json holds no test {metric} of the fused model; these predictions (test {metric} "
                  f"{now:.6f}) were not compared with it", file=sys.stderr)
            return 1
        if abs(now - then) > 1e-6:
            print(f"warning: test {metric} of these predictions is {now:.6f}, results.json says {then:.6f}: the code or "
                  "the data changed since the run", file=sys.stderr)
            return 1
        print(f"test {metric} {now:.6f}, as results.json scored it")
    return 0


def cmd_data(args) -> int:
    """``data ACTION NAME key=value...``: the dataset's own step (its registry line), with the options
    the step declares and the dataset's settings (the recipe's, under the bare or dotted keys given)."""
    from dataclasses import fields

    from rich.progress import Progress

    from mmsent.config import load_config
    from mmsent.data import DATASETS, DataError
    from mmsent.recipes import recipe

    spec = DATASETS[args.dataset]
    job = {"prepare": spec.prepare, "download": spec.download, "cache": spec.cache}[args.action]
    if job is None:
        raise DataError(f"{args.dataset}: no {args.action}; get the raw files and run: {command()} data prepare "
                        f"{args.dataset} (see {command()} data --help)")
    what = f"data {args.action} {args.dataset}"
    options, overrides = job.split(what, args.overrides, {f.name for f in fields(spec.Settings)})
    settings = load_config(recipe(args.dataset), [("data.dataset", args.dataset), *overrides]).data.settings
    with Progress() as progress:
        task = progress.add_task(what, total=None)
        tick = lambda done, total: progress.update(task, completed=done, total=total)  # noqa: E731
        message = job.run(args.dataset, options, settings, tick)
    print(message)
    return 0


def data_help() -> str:
    """Each dataset's steps and their options, read from the registry (so it never goes stale)."""
    from mmsent.data import DATASETS

    users: dict = {}  # (action, job) -> the datasets sharing it, in registry order
    for name, spec in DATASETS.items():
        for action in ("prepare", "download", "cache"):
            if getattr(spec, action) is not None:
                users.setdefault((action, getattr(spec, action)), []).append(name)
    lines = ["options, as key=value (a bare key of the dataset's data.* settings works too: seq_len=50):"]
    for (action, job), names in users.items():
        lines.append(f"  {action} {'|'.join(names)} {job.usage()}")
        lines += [f"      {h}" for h in job.help()]
    return "\n".join(lines)


DRY_RUN = "check everything (config, data, model, rows or trials) and print the plan; write nothing"


def build_parser() -> argparse.ArgumentParser:
    from mmsent.data import DATASETS
    from mmsent.models.fusions import FUSIONS
    from mmsent.strategies import STRATEGIES

    def names(registry, **notes) -> str:  # help text read from a registry, so it never goes stale
        return " | ".join(f"{n} ({notes[n]})" if n in notes else n for n in registry)

    prog = "cli.py" if Path(sys.argv[0]).name == "cli.py" else "mmsent"
    parser = argparse.ArgumentParser(prog=prog, description="mmsent: multimodal learning with DGL")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model; writes RUN_DIR/results.json")
    t.add_argument("--config", help="YAML config (default: the shipped recipe configs/<dataset>.yaml)")
    t.add_argument("--dataset", help=names(DATASETS, synthetic="default") + "; inferred from --data for "
                   + ", ".join(n for n, d in DATASETS.items() if d.detect))
    t.add_argument("--data", help="MMSA pickle/.npz or .csd folder (mosi/mosei/features); corpus folder (audio-visual)")
    t.add_argument("--fusion", help=names(FUSIONS, **{n: "audio-visual" for n, f in FUSIONS.items() if f.needs_maps}))
    t.add_argument("--strategy", help=names(STRATEGIES))
    t.add_argument("--alpha", type=float, help="DGL weight on the unimodal losses")
    t.add_argument("--seed", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--device", help="cpu | cuda | auto")
    t.add_argument("--out", help="run directory (default runs/<dataset>-<strategy>-<fusion>-s<seed>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--dry-run", action="store_true", help=DRY_RUN)
    t.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=3e-4")
    s = sub.add_parser("sweep", help="Optuna sweep from sweeps/NAME.yaml; resumes from its storage")
    s.add_argument("name", help="sweep spec: a name in sweeps/ (alpha) or a YAML path")
    s.add_argument("--config", help="base training config (default: the spec's, or configs/<dataset>.yaml)")
    s.add_argument("--dataset", help=names(DATASETS))
    s.add_argument("--data", help="dataset file")
    s.add_argument("--trials", type=int, help="finished trials the study should hold")
    s.add_argument("--storage", help="Optuna storage URL (default sqlite:///runs/sweeps/<study>.db; journal:PATH, "
                                     "postgresql://..., mysql://... to share a study between workers)")
    s.add_argument("--study", help="study name (default: the spec's name)")
    s.add_argument("--heartbeat", type=int, help="seconds between trial heartbeats (stale trials are failed after 2x)")
    s.add_argument("--worker", type=int, default=0, help="index of this worker when several share a study")
    s.add_argument("--out-dir", default="runs/sweeps", help="where trial runs, the default database and the plot go")
    s.add_argument("--plot", help="PNG path for objective vs parameter (default runs/sweeps/<study>.png)")
    s.add_argument("--apply", metavar="CONFIG", help="write the best values into this YAML config")
    s.add_argument("--report", metavar="MD", help="write a markdown record (command, trials, best) here")
    s.add_argument("--dry-run", action="store_true", help=DRY_RUN)
    s.add_argument("overrides", nargs="*", help="key=value overrides of the base training config")
    r = sub.add_parser("report", help="mean ± std of finished runs' metrics (e.g. one method over seeds)")
    r.add_argument("runs", nargs="+", help="run directories holding results.json")
    r.add_argument("--split", default="test", choices=["test", "val"])
    r.add_argument("--metrics", default=None, help="comma-separated metrics to show (default: every metric of the runs' task)")
    tb = sub.add_parser("table", help="every strategy + unimodal-only models over seeds: the paper's Table 2 (right)")
    tb.add_argument("--dataset", default="mosi", help=names(DATASETS))
    tb.add_argument("--data", help="dataset file")
    # str, not int: nargs="+" also swallows key=value overrides written after the seeds (cmd_table splits them)
    tb.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"])
    tb.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    tb.add_argument("--dry-run", action="store_true", help=DRY_RUN)
    tb.add_argument("--methods", nargs="+", help="rows by label (default: all, every row defined on the "
                    "table's head); 'LABEL:key=value,...' adds a row of its own, e.g. 'DGL a=2:strategy=dgl,strategy.alpha=2'")
    tb.add_argument("--reference", action="append", metavar="LABEL", help="also compare every row with this row "
                    "(e.g. DGL); the multimodal baseline always is (significance: docs/guides/tables.md)")
    tb.add_argument("--config", help="training config for every row (default: configs/<dataset>.yaml)")
    tb.add_argument("--name", help="output file stem (default: <dataset>_table)")
    tb.add_argument("--runs-dir", help="where the runs go (default runs/table/<dataset>); finished runs are reused")
    tb.add_argument("--out", default="results", help="folder for <dataset>_table.md and .csv")
    tb.add_argument("--update", action="store_true", help="re-make only the --methods rows and replace them in the "
                    "existing table (every other row kept as it is; the file notes which rows were re-made)")
    tb.add_argument("--drop", nargs="+", metavar="LABEL", help="with --update: remove these rows (a method no "
                    "longer defined for the table's model), noted in the file")
    tb.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    pr = sub.add_parser("predict", help="per-sample predictions of a trained run (fused model and every branch) as CSV")
    pr.add_argument("--run", required=True, help="the run directory (its validation-selected best.pt)")
    pr.add_argument("--data", help="data to predict on, in the run's format (default: the run's own data)")
    pr.add_argument("--split", choices=["train", "val", "test"], default="test")
    pr.add_argument("--out", required=True, help="the CSV to write: id, label, one column per branch")
    pr.add_argument("--device", default="cpu")
    pl = sub.add_parser("plot", help="PNG figures from run logs: gradient norms, branch accuracy")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.add_argument("--out", default="figures", help="output folder")
    da = sub.add_parser("data", help="a dataset's own steps: prepare its raw files, download them, cache decoded "
                        "inputs (each dataset's steps and options: data --help)", epilog=data_help(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    da.add_argument("action", choices=["prepare", "download", "cache"])
    da.add_argument("dataset", choices=[n for n, d in DATASETS.items() if d.prepare or d.download or d.cache])
    da.add_argument("overrides", nargs="*", metavar="key=value", help="the step's options (listed below) and "
                    "settings of the dataset")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    # key=value overrides may come anywhere, also after options, which plain argparse rejects.
    args, rest = parser.parse_known_args(argv)
    args.argv = argv
    stray = [r for r in rest if "=" not in r or r.startswith("-")]
    if stray:
        flag = next((r for r in stray if r.startswith("--")), None)
        hint = (f" (the data steps take key=value options: {flag[2:].replace('-', '_')}=...; see "
                f"{parser.prog} data --help)" if args.command == "data" and flag else "")
        parser.error(f"unrecognized arguments: {' '.join(stray)}{hint}")
    args.overrides = list(getattr(args, "overrides", [])) + rest
    return args


def main(argv=None) -> int:
    """The command line; called in-process (tests, notebooks) it leaves the caller's signal handlers
    and warning format as they were."""
    import signal
    import threading
    import warnings

    from mmsent.interrupt import die_with_parent, raise_on_sigterm

    die_with_parent()  # a table's child: SIGTERM when the table dies, however it dies
    main_thread = threading.current_thread() is threading.main_thread()
    old_term, old_format = signal.getsignal(signal.SIGTERM) if main_thread else None, warnings.formatwarning
    raise_on_sigterm()  # `kill` stops like Ctrl-C: one line, not a silent death
    # warnings (data cleaned, arrays not used) as `warning: ...` lines, without source lines
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    for stream in (sys.stdout, sys.stderr):  # an ASCII-only terminal gets '\xb1' for '±', not a traceback
        if getattr(stream, "errors", "strict") == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = old_format
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)


def _main(argv) -> int:
    from mmsent.interrupt import Interrupted

    try:
        from mmsent.checks import ConfigError
        from mmsent.plugins import load_plugins

        try:  # before the parser: its help and choices are read from the registries
            load_plugins()
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        args = parse(sys.argv[1:] if argv is None else list(argv))

        from mmsent.config import ConfigError
        from mmsent.data import DataError
        from mmsent.files import FileError
        from mmsent.sweep import SweepError
        from mmsent.checks import first_line, is_out_of_memory
        from mmsent.rundir import RunError

        try:
            return {"train": cmd_train, "sweep": cmd_sweep, "report": cmd_report, "table": cmd_table,
                    "plot": cmd_plot, "data": cmd_data, "predict": cmd_predict}[args.command](args)
        except (ConfigError, DataError, RunError, SweepError, FileError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as e:
            from mmsent.distributed import lost_peer

            lost = lost_peer(e)  # a collective outside the training loop (a barrier, the first broadcast)
            if lost:
                from mmsent.interrupt import ignore_stop_signals

                ignore_stop_signals()
                print(f"error: {lost}", file=sys.stderr)
                return 2
            if not is_out_of_memory(e):
                raise
            print(f"error: out of memory ({first_line(e)}); choose smaller data or model sizes", file=sys.stderr)
            return 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted by SIGINT; what was finished is kept: run the same command again to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
