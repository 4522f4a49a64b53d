"""Use a trained run: ``load_run(DIR)`` rebuilds the validation-selected model and its strategy's
prediction; ``cli.py predict --run DIR [--data FILE] [--split test] --out preds.csv`` writes the
per-sample predictions of the fused model and of every modality branch.

The model is the run's ``best.pt`` (the epoch selected on validation) and the strategy is in the
state of the run's end (``last.pt``), which is how ``fit`` scored the test split; so predictions on
the run's own test split are the ones its ``results.json`` was computed from. ``fit`` also writes
them, as ``test_predictions.csv`` in the run folder, in the same format.

New data is read by the run's own dataset loader and settings (its ``data.*`` keys), so it must be
in the format the run was trained on and hold its modalities at their widths; a file that does not
is refused with one line naming the modality. (Per-split standardisation is the loader's: a
feature file is standardised with its own train split's statistics.)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from mmsent.checks import first_line
from mmsent.data import DataError, Dataset, Split, build_dataset
from mmsent.evaluate import branch_predictions
from mmsent.predictions import check_data
from mmsent.report import read_results


@dataclasses.dataclass
class Run:
    """A trained run, ready to predict. ``predictions(split)`` gives branch -> (n, out_dim) outputs
    (regression: the score; classification: logits), ``predict(batch, keep)`` one batch's."""

    path: Path
    config: object  # the run's Config
    dataset: Dataset
    task: object
    model: torch.nn.Module
    strategy: object
    results: dict | None

    def predict(self, batch, keep: list[str] | None = None) -> Tensor:
        return self.strategy.predict(batch.to(self.strategy.device), keep)

    def predictions(self, split: Split) -> dict[str, Tensor]:
        return branch_predictions(self.strategy, split, self.config.data.batch_size)


def load_run(run_dir, data: str | None = None, device: str = "cpu") -> Run:
    """The run in ``run_dir`` on its own data, or on ``data`` (a path its dataset loader reads)."""
    from mmsent.models import build_model
    from mmsent.rundir import RunError, load_checkpoint, load_run_config
    from mmsent.tasks import build_task
    from mmsent.train import build_optimizer, build_strategy

    run = Path(run_dir)
    cfg = load_run_config(run)  # RunError: not a run, damaged config
    if not (run / "best.pt").is_file():
        if (run / "results.json").is_file() or (run / "last.pt").is_file():  # epochs finished; the file is gone
            raise RunError(f"{run}: best.pt (the selected epoch's weights) is missing, though the run has finished "
                           "epochs; it was removed or moved: restore it, or train the run again with another --out")
        raise RunError(f"{run}: no best.pt; no epoch of this run has finished (train it, or --resume it)")
    results = read_results(run / "results.json") if (run / "results.json").is_file() else None
    dataset = build_dataset(dataclasses.replace(cfg.data, path=str(data)) if data else cfg.data, cfg.seed)
    check_data(str(data or cfg.data.path or cfg.data.dataset), dataset, (results or {}).get("data"))
    task = build_task(dataset.task, dataset.num_classes, dataset.class_weights)
    dev = torch.device(device)
    model = build_model(cfg.model, dataset, task.out_dim).to(dev)
    strategy = build_strategy(cfg, model, build_optimizer(model, cfg.train), task, batch_size=cfg.data.batch_size)
    # the strategy as the run ended, which scored the test split (a damaged file is said as itself)
    last = load_checkpoint(run / "last.pt", dev) if (run / "last.pt").is_file() else None
    best = load_checkpoint(run / "best.pt", dev)
    try:
        if last is not None:
            strategy.load_state_dict(last["strategy"])
        model.load_state_dict(best["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise DataError(f"{data or run}: the run's weights do not fit a model built on this data ({type(e).__name__}: "
                        f"{first_line(e)[:160]}); give data with the run's modalities and widths") from None
    model.eval()
    return Run(run, cfg, dataset, task, model, strategy, results)
