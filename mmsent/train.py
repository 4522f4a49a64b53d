"""The one training loop. ``run = prepare(cfg)`` builds and checks everything a run is made of --
data, task, model, optimizer, strategy, device, process group, folder -- and writes nothing;
``train(run)`` trains it: epochs of steps, validation, selection on validation only, checkpoints,
then the selected epoch's test scores. ``fit(cfg)`` is the two in one call.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``best.pt`` and
``last.pt`` (both written atomically) and, when done, ``results.json``. ``resume=True`` continues
from ``last.pt`` with the same RNG streams, so a resumed run equals an uninterrupted one. What
happens to the folder (lock, signals, resume, errors) is ``rundir.RunFolder``'s; what fits in memory
is ``resources``'; a batch's steps are ``loop.train_epoch``.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmsent.config import Config, ConfigError, choose
from mmsent.data import Dataset, build_dataset
from mmsent.distributed import Dist, init_from_env
from mmsent.evaluate import evaluate, evaluate_with_predictions
from mmsent.loop import train_epoch
from mmsent.models import BertEncoder, MultimodalModel, build_model, evaluating, min_batch
from mmsent.predictions import PREDICTIONS, data_fingerprint, data_signature, write_predictions
from mmsent.probe import probe_encoders
from mmsent.provenance import provenance
from mmsent.resources import check_model_fits, largest_input, model_memory
from mmsent.rundir import RunError, RunFolder, check_resume_config, default_run_dir
from mmsent.strategies import STRATEGIES
from mmsent.tasks import build_task, lower_is_better, metric_names
from mmsent.tracking import check_available


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def build_optimizer(model: MultimodalModel, cfg) -> torch.optim.Optimizer:
    """Adam or SGD with momentum 0.9; pretrained transformer weights get their own (small) learning rate."""
    bert = {id(p) for enc in model.encoders.values() if isinstance(enc, BertEncoder) for p in enc.bert.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen BERT layers stay out
    groups = [{"params": [p for p in trainable if id(p) not in bert], "lr": cfg.lr}]
    if any(id(p) in bert for p in trainable):
        groups.append({"params": [p for p in trainable if id(p) in bert], "lr": cfg.bert_lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose from adam, sgd")


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg, epoch: int) -> None:
    """Step decay (the DGL paper's "x0.1 every 70 epochs"): a function of the epoch alone, so a
    resumed run gets the same rate without a scheduler state."""
    for g in optimizer.param_groups:
        base = g.setdefault("initial_lr", g["lr"])
        g["lr"] = base * cfg.lr_gamma ** (epoch // cfg.lr_step) if cfg.lr_step > 0 else base


def build_strategy(cfg: Config, model, optimizer, task, **loop):
    """The chosen strategy on its typed settings (``cfg.strategy.settings``, checked at config load)
    and the loop's context (``loop``: the process group, batch size, steps per epoch, smallest
    training batch); what only the model can tell (a unimodal modality that the data lacks) fails
    here, still before the run directory exists."""
    cls = choose(STRATEGIES, "strategy", cfg.strategy.name)
    if not task.tabular and not cls.dense_ok:
        dense = ", ".join(n for n, c in STRATEGIES.items() if c.dense_ok)
        raise ConfigError(f"strategy {cfg.strategy.name!r} is not defined for dense prediction: it needs per-sample "
                          f"logits, scores or prototypes; choose from {dense}")
    try:
        return cls(model, optimizer, task, grad_clip=cfg.train.grad_clip, **loop, **asdict(cfg.strategy.settings))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"strategy {cfg.strategy.name!r}: {e}") from None


@dataclass
class Run:
    """Everything one training run is made of, built and checked by ``prepare`` before anything
    is written."""
    cfg: Config
    dataset: Dataset
    task: object
    model: MultimodalModel
    optimizer: torch.optim.Optimizer
    strategy: object
    device: torch.device
    dist: Dist
    path: Path  # the run folder
    generator: torch.Generator  # the training batches' shuffling
    console: Console
    resume: bool = False
    command_line: str | None = None  # recorded in the run's provenance (None: this process's)
    on_epoch: Callable | None = None  # on_epoch(epoch, val) after each validation; may raise to stop

    @cached_property
    def log_batch(self):
        """A fixed training batch (the first samples, unaugmented) for the gradient and diagnostic logs."""
        index = torch.arange(min(len(self.dataset.train), self.cfg.data.batch_size))
        return self.dataset.train.batch(index, deferred=True).to(self.device)

    def plan(self) -> dict:
        """What ``train`` would do (``--dry-run``): every check passed; the folder is checked, not touched."""
        RunFolder.check(self.path, self.resume)
        return {"dry_run": True, "run_dir": str(self.path), "config": self.cfg.to_dict(),
                "data": data_signature(self.dataset),
                "sizes": {s: len(getattr(self.dataset, s)) for s in ("train", "val", "test")},
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "steps_per_epoch": self.strategy.steps_per_epoch, "schedule": self.strategy.schedule}


def prepare(cfg: Config, *, resume: bool = False, quiet: bool = False, dataset: Dataset | None = None,
            on_epoch=None, command_line: str | None = None, planning: bool = False) -> Run:
    """Build and check a run; nothing is written but the data's deferred work (a data cache built
    on first use), done last, after every check. ``planning``: a dry run, which only says what that
    work would be. Every refusal is one line (ConfigError, DataError, RunError) before the run
    folder exists."""
    device = resolve_device(init_from_env(cfg.device))  # under torchrun: join the group, pick this rank's GPU
    dist = Dist()
    console = Console(quiet=quiet or not dist.is_main, stderr=True)  # rank 0 alone speaks and writes
    if cfg.train.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.amp=true uses bfloat16 autocast, which this GPU does not support; set train.amp=false")
    dataset = dataset or build_dataset(cfg.data, planning=True)  # its deferred work (a cache) waits for the checks
    check_fits_data(cfg, dataset)
    task = build_task(dataset.task, dataset.num_classes, dataset.class_weights)
    if device.type == "cuda" and dataset.kinds:  # image inputs of one size: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    check_model_fits(cfg, dataset, task.out_dim, device)
    with model_memory(device):
        model = build_model(cfg.model, dataset, task.out_dim).to(device)
    smallest, note = min_batch(model, cfg.data.batch_size, len(dataset.train))
    shards = dist.check_batches(cfg.data.batch_size, len(dataset.train), batch_norm=smallest > 1)
    for line in (shards, note) if dist.is_main else ():
        if line:
            print(line, file=sys.stderr)
    optimizer = build_optimizer(model, cfg.train)
    strategy = build_strategy(cfg, model, optimizer, task, dist=dist, batch_size=cfg.data.batch_size,
                              min_batch=smallest, steps_per_epoch=dataset.train.n_batches(cfg.data.batch_size, smallest),
                              epochs=cfg.train.epochs, amp=cfg.train.amp)
    check_available([n.strip() for n in cfg.train.log.split(",")])  # a missing tensorboard / wandb package
    path = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if resume:
        check_resume_config(path, cfg)
    if planning:  # a dry run writes nothing: it says what the run would do first
        for work in dataset.deferred if dist.is_main else ():
            print(f"note: the run would {work.note} first", file=sys.stderr)
    else:
        dataset.run_deferred()
    return Run(cfg, dataset, task, model, optimizer, strategy, device, dist, path, torch.Generator().manual_seed(cfg.seed),
               console, resume, command_line, on_epoch)


def check_fits_data(cfg: Config, dataset: Dataset) -> None:
    """What the config asks of the data: a selection metric its task has, two or more modalities."""
    if cfg.train.select != "loss" and cfg.train.select not in metric_names(dataset.task):
        raise ConfigError(f"train.select {cfg.train.select!r} is not a metric of this {dataset.task} task; "
                          f"choose from loss, {', '.join(metric_names(dataset.task))}")
    if len(dataset.modalities) < 2 and not STRATEGIES[cfg.strategy.name].one_modality:  # README: N >= 2
        alone = ", ".join(repr(n) for n, c in STRATEGIES.items() if c.one_modality)
        raise ConfigError(f"the data holds one modality ({', '.join(dataset.modalities)}); strategy "
                          f"{cfg.strategy.name!r} needs two or more (strategy {alone} trains one alone)")


def fit(cfg: Config, *, resume: bool = False, quiet: bool = False, dataset: Dataset | None = None,
        on_epoch=None, command_line: str | None = None) -> dict:
    """Train one model and return ``results`` (also written to ``<run>/results.json``):
    ``train(prepare(cfg, ...))``. ``on_epoch(epoch, val)`` is called after each epoch's validation
    (a sweep reports it to its pruner); it may raise to stop the run, which then stays resumable."""
    return train(prepare(cfg, resume=resume, quiet=quiet, dataset=dataset, on_epoch=on_epoch,
                         command_line=command_line))


def train(run: Run) -> dict:
    """The loop: epochs of training steps, validation, selection on validation only, checkpoints;
    then ``finish`` scores the selected epoch on the test split."""
    cfg, data, model, strategy, dist = run.cfg, run.dataset, run.model, run.strategy, run.dist
    here = provenance(run.device, cfg.train.amp, dist, run.command_line)  # a resumed run adds a line of its own
    state = {"epoch": -1, "best_epoch": -1, "best_score": math.inf, "best_val": None, "data": data_fingerprint(data)}
    sign = 1.0 if lower_is_better(cfg.train.select) else -1.0  # scores are minimised
    with RunFolder.session(run.path, cfg, run.resume, dist, largest_input(cfg, data)) as folder, \
            Bars(run.console, cfg.train.epochs, strategy.steps_per_epoch) as bars:
        if run.resume:
            folder.restore(run, state)
        folder.log({"provenance": here})
        for epoch in range(state["epoch"] + 1, cfg.train.epochs):
            if 0 <= state["best_epoch"] < epoch - cfg.train.patience:
                break  # early stopping: patience epochs without a better validation score
            t0 = time.perf_counter()
            set_epoch_lr(run.optimizer, cfg.train, epoch)
            strategy.on_epoch_start(epoch, data)
            bars.start(epoch, done=epoch)
            logs = train_epoch(strategy, data.train, run.generator, amp=cfg.train.amp, label=f"epoch {epoch}",
                               before_step=None if dist.active else folder.safe_point, after_step=bars.step)
            val = evaluate(strategy, data.val, run.task, cfg.data.batch_size, run.device, cfg.train.amp)
            record = epoch_record(run, epoch, logs, val, time.perf_counter() - t0)
            if sign * val["multi"][cfg.train.select] < state["best_score"]:  # selection: validation only
                state.update(best_epoch=epoch, best_score=sign * val["multi"][cfg.train.select], best_val=val,
                             best_actions=dict(strategy.actions))
                folder.save_best(model, epoch)
            state["epoch"] = epoch
            folder.end_epoch(record, checkpoint(run, state))
            bars.end(record, cfg.train.select, run.task.headline, best=state["best_epoch"] == epoch)
            if run.on_epoch is not None:
                run.on_epoch(epoch, val)
            folder.safe_point(dist)  # every rank stops here if any was asked to (torchrun signals them all)
        return finish(run, state, folder, here)


def epoch_record(run: Run, epoch: int, logs: dict, val: dict, seconds: float) -> dict:
    """One line of ``metrics.jsonl``: the epoch's training means, validation metrics, learning rate,
    time, the method's actions so far and, with ``train.grad_probe``, the gradient and diagnostic
    logs on a fixed training batch."""
    record = {"epoch": epoch, "train": logs, "val": val, "lr": run.optimizer.param_groups[0]["lr"], "seconds": seconds}
    if run.strategy.counts:  # what the method has done so far (cumulative): a method that never acts is seen
        record["actions"] = dict(run.strategy.actions)
    if run.cfg.train.grad_probe:
        record["grad_norm"] = gradient_probe(run.model, run.log_batch, run.task)
        record["diag"] = diagnostics(run.model, run.log_batch, run.task)
    return record


def checkpoint(run: Run, state: dict) -> dict:
    """``last.pt``: everything ``--resume`` needs to continue as if never stopped."""
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "strategy": run.strategy.state_dict(), "rng": torch.get_rng_state(),
            "generator": run.generator.get_state(), "state": state}


def finish(run: Run, state: dict, folder: RunFolder, here: dict) -> dict:
    """The selected epoch's weights scored once on the test split; ``results.json``, the test
    predictions and, with ``train.probe``, the frozen encoders' linear probes."""
    cfg, dist = run.cfg, run.dist
    if state["best_epoch"] < 0:
        raise RunError(f"{run.path}: no epoch was trained (train.epochs={cfg.train.epochs})")
    dist.barrier()  # rank 0 has written best.pt
    run.model.load_state_dict(folder.load_best(run.device, state["best_epoch"])["model"])
    test, test_preds = evaluate_with_predictions(run.strategy, run.dataset.test, run.task, cfg.data.batch_size,
                                                 run.device, cfg.train.amp)
    results = {"task": run.dataset.task, "data": data_signature(run.dataset), "val": state["best_val"], "test": test,
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"] + 1, "config": cfg.to_dict(),
               # every setting the strategy ran with, its code defaults included (config.json holds
               # only what was given): `cli.py table` tells from it that a default has changed since
               "strategy_settings": asdict(cfg.strategy.settings), "schedule": run.strategy.schedule}
    results.update(actions_of(run, state))
    if cfg.train.probe and dist.is_main:  # the selected epoch's encoders, frozen, each with a linear probe
        t0 = time.perf_counter()
        results["probe"] = probe_encoders(run.model, run.dataset, run.task, cfg.data.batch_size)
        results["probe_seconds"] = time.perf_counter() - t0
    if folder.writes and test_preds is not None:  # per-sample test predictions: `cli.py table` tests differences on them
        write_predictions(run.path / PREDICTIONS, run.dataset.test, test_preds, run.task)
    folder.write_results(results, here)
    dist.barrier()  # the run is complete on disk before any rank returns
    results["run_dir"] = str(run.path)
    return results


def actions_of(run: Run, state: dict) -> dict:
    """The method's actions up to the selected epoch's end and over the whole run, and whether it
    never acted (only where an idle step is plain training: then the selected model is vanilla)."""
    strategy = run.strategy
    if not strategy.counts:
        return {}
    acted = state.get("best_actions") or dict.fromkeys(strategy.counts, 0)
    out = {"actions": {"selected_epoch": acted, "run": dict(strategy.actions)}}
    if strategy.idle_is_vanilla:
        out["never_acted"] = not any(acted.values())
    if out.get("never_acted") and run.dist.is_main:
        print(f"note: {run.cfg.strategy.name} never acted before the selected epoch {state['best_epoch']} "
              f"({', '.join(acted)}: 0), so the selected model is plain joint training"
              + (f"; its schedule here: {', '.join(f'{k} {v}' for k, v in strategy.schedule.items())}"
                 if strategy.schedule else ""), file=sys.stderr)
    return out


class Bars:
    """The progress bars (epochs, and the steps of the current one) and the line each epoch prints;
    nothing at all with a quiet console."""

    def __init__(self, console: Console, epochs: int, steps: int):
        self.console, self.epochs, self.steps = console, epochs, steps
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console, transient=True, disable=console.quiet)
        self.epoch_bar = self.step_bar = None

    def __enter__(self) -> "Bars":
        if not self.console.quiet:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if not self.console.quiet:
            self.progress.__exit__(*exc)

    def start(self, epoch: int, done: int) -> None:
        if self.epoch_bar is None:
            self.epoch_bar = self.progress.add_task("epochs", total=self.epochs, completed=done)
        self.step_bar = self.progress.add_task(f"epoch {epoch}", total=self.steps)

    def step(self) -> None:
        self.progress.advance(self.step_bar)

    def end(self, record: dict, select: str, headline: str, best: bool) -> None:
        self.progress.remove_task(self.step_bar)
        self.progress.advance(self.epoch_bar)
        val = record["val"]["multi"]
        self.console.print(f"epoch {record['epoch']:3d}  train loss {record['train']['loss']:.4f}  val {select} "
                           f"{val[select]:.4f}  val {headline} {val[headline]:.4f}" + ("  *" if best else ""))


def gradient_probe(model: MultimodalModel, batch, task) -> dict[str, dict[str, float]]:
    """Norm of each encoder's gradient from its unimodal loss (others zeroed) and from the vanilla
    multimodal loss, on a fixed batch in eval mode: the quantity of the paper's Fig. 1c / 3b."""
    def norm(gs) -> float:
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs if g is not None)))

    out = {}
    with evaluating(model):
        feats = model.encode(batch)
        multi = task.loss(model.head(feats), batch.y)
        for m in model.modalities:
            params = [p for p in model.encoders[m].parameters() if p.requires_grad]
            uni = task.loss(model.head(model.mask_modalities(feats, [m])), batch.y)
            g_multi = torch.autograd.grad(multi, params, retain_graph=True, allow_unused=True)
            g_uni = torch.autograd.grad(uni, params, retain_graph=True, allow_unused=True)
            out[m] = {"unimodal": norm(g_uni), "multimodal": norm(g_multi)}
    return out


@torch.no_grad()
def diagnostics(model: MultimodalModel, batch, task) -> dict[str, dict[str, float]]:
    """What explains a branch's behaviour, on a fixed batch in eval mode: each encoder's feature
    norm (mean over samples of ||z_m||), and for the full pass and every masked pass (the others
    zeroed) the loss, the spread of the outputs over the batch and their mean magnitude (for
    classes: of the logits, plus the mean top probability)."""
    from mmsent.strategies.base import feature_vectors

    out: dict[str, dict[str, float]] = {}
    with evaluating(model):
        feats = model.encode(batch)
        passes = {"multi": feats, **{m: model.mask_modalities(feats, [m]) for m in model.modalities}}
        for k, inputs in passes.items():
            pred = model.head(inputs).float()
            row = {"loss": float(task.loss(pred, batch.y)), "out_std": float(pred.std(0).mean()),
                   "out_abs": float(pred.abs().mean())}
            row.update(task.diagnose(pred))
            if k != "multi":
                row["feat_norm"] = float(feature_vectors(feats[k].float()).norm(dim=1).mean())
            out[k] = row
    return out


