"""mmsent command line: ``python cli.py train [...]``. Parsing only; the work is in ``mmsent``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _train_overrides(args) -> list[str]:
    pairs = [("data.dataset", args.dataset), ("data.path", args.data), ("model.fusion", args.fusion),
             ("strategy.name", args.strategy), ("strategy.args.alpha", args.alpha), ("seed", args.seed),
             ("train.epochs", args.epochs), ("out", args.out), ("device", args.device)]
    return [(k, v) for k, v in pairs if v is not None]


def cmd_train(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mmsent.config import load_config
    from mmsent.train import fit, load_run_config

    overrides = _train_overrides(args) + list(args.overrides)
    if args.resume:
        if not args.out:
            raise SystemExit("error: --resume needs --out DIR (the run to continue)")
        base = load_run_config(Path(args.out)).to_dict()
        cfg = load_config(args.config, overrides, base=base)
    else:
        config = args.config
        if config is None:
            candidate = ROOT / "configs" / f"{args.dataset or 'synthetic'}.yaml"
            config = candidate if candidate.is_file() else None
        cfg = load_config(config, overrides)
    results = fit(cfg, resume=args.resume, quiet=args.quiet)

    console = Console()
    names = ["mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "acc7", "acc", "f1"]
    names = [n for n in names if n in results["test"]["multi"]] or list(results["test"]["multi"])
    table = Table(title=f"test metrics at best validation epoch {results['best_epoch']} ({results['run_dir']})")
    table.add_column("branch")
    for n in names:
        table.add_column(n, justify="right")
    for branch, metrics in results["test"].items():
        table.add_row(branch, *(f"{metrics[n]:.3f}" for n in names))
    console.print(table)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cli.py", description="mmsent: multimodal learning with DGL")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model; writes RUN_DIR/results.json")
    t.add_argument("--config", help="YAML config (default: configs/<dataset>.yaml)")
    t.add_argument("--dataset", help="synthetic (default) | mosi")
    t.add_argument("--data", help="path to the dataset file (MMSA pickle for mosi)")
    t.add_argument("--fusion", help="concat | sum | gated | film | mlpmixer")
    t.add_argument("--strategy", help="vanilla | unimodal | dgl")
    t.add_argument("--alpha", type=float, help="DGL weight on the unimodal losses")
    t.add_argument("--seed", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--device", help="cpu | cuda | auto")
    t.add_argument("--out", help="run directory (default runs/<dataset>-<strategy>-<fusion>-s<seed>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)

    from mmsent.config import ConfigError
    from mmsent.data import DataError
    from mmsent.train import RunError

    try:
        return {"train": cmd_train}[args.command](args)
    except (ConfigError, DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
