"""Experiment tracking (``train.log``): where a run's per-epoch records and final results go besides
``metrics.jsonl`` and ``results.json``, which every run writes.

* ``jsonl``: those two files only (the default);
* ``tensorboard``: event files in ``<run>/tensorboard`` (``pip install 'mmsent[tensorboard]'``);
* ``wandb``: a Weights & Biases run in ``<run>/wandb``, offline unless ``WANDB_MODE`` says otherwise
  (``pip install 'mmsent[wandb]'``; ``wandb sync <run>/wandb/offline-run-*`` uploads it later).

Several at once: ``train.log=tensorboard,wandb``. What is logged, at step = epoch: the training losses
(``train/*``), validation metrics per branch (``val/<branch>/<metric>``), the learning rate, the
gradient norms and diagnostics (``grad_norm/<modality>/*``, ``diag/<modality>/*``) and, at the
selected epoch, the test metrics per branch and the probes (``test/...``, ``probe/...``). A sweep's
trials are runs and log the same way. Only rank 0 logs under torchrun.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from mmsent.checks import ConfigError

TRACKERS = ("jsonl", "tensorboard", "wandb")
PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}  # what each needs installed


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """``{"val": {"multi": {"acc": 0.5}}}`` -> ``{"val/multi/acc": 0.5}``; numbers only."""
    out = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def epoch_scalars(record: dict) -> dict[str, float]:
    """The scalars of one epoch record of metrics.jsonl (the epoch itself and its duration left out)."""
    return flatten({k: v for k, v in record.items() if k not in ("epoch", "seconds")})


def result_scalars(results: dict) -> dict[str, float]:
    """The final test metrics per branch and the probes' test metrics."""
    probes = {m: v["test"] for m, v in results.get("probe", {}).items() if "test" in v}
    return flatten({"test": results["test"], "probe": probes})


def check_available(names) -> None:
    """One line before anything is written when a chosen tracker's package is not installed."""
    for name in names:
        if name in PACKAGE and importlib.util.find_spec(PACKAGE[name]) is None:
            raise ConfigError(f"train.log={name} needs the {PACKAGE[name]} package: pip install 'mmsent[{name}]' "
                              "(or choose train.log=jsonl)")


class TensorBoard:
    def __init__(self, run: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))
        self.writer.add_text("config", "```\n" + repr(config) + "\n```", 0)

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, run: Path, config: dict):
        import wandb

        self.wandb = wandb
        # one W&B run per run folder, also across --resume: its id derives from the folder's path
        run_id = hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mmsent"), name=run.name, id=run_id,
                              dir=str(run), config=config, resume="allow",
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=epoch)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The chosen trackers of one run (``jsonl`` needs none: fit writes metrics.jsonl itself)."""

    def __init__(self, names, run: Path, config: dict, active: bool = True):
        kinds = {"tensorboard": TensorBoard, "wandb": Wandb}
        self.trackers = [kinds[n](run, config) for n in names if n in kinds] if active else []

    def epoch(self, record: dict) -> None:
        for t in self.trackers:
            t.epoch(record["epoch"], epoch_scalars(record))

    def results(self, results: dict) -> None:
        for t in self.trackers:
            t.epoch(results["best_epoch"], result_scalars(results))

    def close(self) -> None:
        for t in self.trackers:
            t.close()
