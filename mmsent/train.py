"""The one training loop: ``fit(cfg)`` trains with any strategy, selects the epoch on validation
only, and scores the test split once, on that epoch's checkpoint.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``best.pt`` and
``last.pt`` (both written atomically) and, when done, ``results.json``. ``resume=True`` continues
from ``last.pt`` with the same RNG streams, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmsent.config import Config, ConfigError, choose, load_config
from mmsent.data import Dataset, Split, build_dataset
from mmsent.distributed import Dist, init_from_env
from mmsent.models import BertEncoder, MultimodalModel, build_model, evaluating
from mmsent.probe import probe_encoders
from mmsent.strategies import STRATEGIES
from mmsent.tasks import build_task, lower_is_better, metric_names


class RunError(RuntimeError):
    """A run that cannot start or go on (existing run directory, non-finite loss...)."""


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


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast: no loss scaling is needed (unlike float16), so every strategy's own
    backward and gradient edits stay exact in their float32 master weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def build_strategy(cfg: Config, model, optimizer, task):
    """The chosen strategy on its typed settings (``cfg.strategy.settings``, checked at config load);
    what only the model can tell (a unimodal modality that the data lacks) fails here, still before
    the run directory exists."""
    cls = choose(STRATEGIES, "strategy", cfg.strategy.name)
    try:
        return cls(model, optimizer, task, grad_clip=cfg.train.grad_clip, **asdict(cfg.strategy.settings))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"strategy {cfg.strategy.name!r}: {e}") from None


def evaluate(strategy, split: Split, task, batch_size: int, device, amp: bool = False) -> dict[str, dict[str, float]]:
    """Metrics of the full model ("multi") and of every modality branch (the others zeroed)."""
    with autocast(device, amp):
        preds = strategy.branch_predictions(split, batch_size)
    return {k: {"loss": float(task.loss(p, split.y)), **task.metrics(p, split.y)} for k, p in preds.items()}


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
            if task.name == "classification":
                row["top_prob"] = float(pred.softmax(-1).max(-1).values.mean())
            if k != "multi":
                row["feat_norm"] = float(feature_vectors(feats[k].float()).norm(dim=1).mean())
            out[k] = row
    return out


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN (Pearson r of a constant prediction)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def load_checkpoint(path: Path, device) -> dict:
    """A checkpoint written by ``fit``. Only tensors and plain containers are read
    (``weights_only=True``): a file holding anything else, code included, is refused, never run.
    A missing, empty or truncated file is a ``RunError`` naming it."""
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found; the run directory is incomplete (start a new run with another --out)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # what weights_only raises for a disallowed global
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{path}: refused to load: it holds objects other than tensors and plain containers "
                       f"({first[:160]}); mmsent never writes such checkpoints") from None
    except Exception as e:  # empty, truncated or not a checkpoint at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunError(f"{path}: damaged checkpoint ({type(e).__name__}: {first[:160]}); "
                       "start a new run with another --out") from None


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.dataset}-{cfg.strategy.name}-{cfg.model.fusion}-s{cfg.seed}-{stamp}"


MARKER = ".mmsent-run"  # written into every run directory: only such a directory is ever reused


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{path}: not found; --resume needs the directory of an earlier run (--out DIR)")
    try:
        tree = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: damaged, not valid JSON ({e}); the run cannot be resumed, start a new one "
                       "with another --out") from None
    if not isinstance(tree, dict):
        raise RunError(f"{path}: damaged, not a config mapping; start a new run with another --out")
    return load_config(base=tree)


def create_run_dir(run: Path, cfg: Config) -> None:
    """Make ``run`` with the marker and ``config.json``; it appears complete or not at all. Nothing
    the program did not write is ever replaced or deleted: an existing non-empty folder must be a
    run directory of ours that died before its first checkpoint (it is then reused in place)."""
    if run.exists() and not run.is_dir():
        raise RunError(f"{run}: exists and is not a directory; pass another --out")
    if run.is_dir() and any(run.iterdir()):
        if not (run / MARKER).is_file():
            raise RunError(f"{run}: exists, is not empty and is not an mmsent run directory; pass another --out")
        if any((run / f).exists() for f in ("last.pt", "best.pt", "results.json")):
            raise RunError(f"{run}: run directory exists and is not empty; pass --resume or another --out")
        _atomic_json(cfg.to_dict(), run / "config.json")  # ours, died before epoch 0: start again in place
        return
    try:
        run.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}.", dir=run.parent))
        (tmp / MARKER).write_text("written by mmsent: a run directory (config.json, checkpoints, logs)\n")
        _atomic_json(cfg.to_dict(), tmp / "config.json")
        os.rename(tmp, run)  # replaces at most an empty directory
    except OSError as e:
        raise RunError(f"{run}: cannot create the run directory ({e.strerror or e}); pass another --out") from None


def fit(cfg: Config, *, resume: bool = False, quiet: bool = False, dataset: Dataset | None = None,
        on_epoch=None) -> dict:
    """Train one model and return ``results`` (also written to ``<run>/results.json``).

    ``on_epoch(epoch, val)`` is called after each epoch's validation (a sweep reports it to its
    pruner); it may raise to stop the run, which then stays resumable from ``last.pt``.
    """
    device = resolve_device(init_from_env(cfg.device))  # under torchrun: join the group, pick this rank's GPU
    ddp = Dist()
    console = Console(quiet=quiet or not ddp.is_main, stderr=True)  # rank 0 alone speaks and writes
    if cfg.train.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.amp=true uses bfloat16 autocast, which this GPU does not support; set train.amp=false")
    dataset = dataset or build_dataset(cfg.data)
    if cfg.train.select != "loss" and cfg.train.select not in metric_names(dataset.task):
        raise ConfigError(f"train.select {cfg.train.select!r} is not a metric of this {dataset.task} task; "
                          f"choose from loss, {', '.join(metric_names(dataset.task))}")
    task = build_task(dataset.task, dataset.num_classes)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, dataset, task.out_dim).to(device)
    optimizer = build_optimizer(model, cfg.train)
    strategy = build_strategy(cfg, model, optimizer, task)
    strategy.dist = ddp
    if ddp.active and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # SyncBatchNorm is CUDA-only and the masked passes use functional (vmap) BatchNorm, so the
        # training statistics stay per shard: equivalent in distribution, not bitwise, to one process.
        console.print(f"note: BatchNorm statistics are per rank ({ddp.world} shards of each batch), not synchronised")
    if ddp.active and (cfg.data.batch_size < ddp.world or 0 < len(dataset.train) % cfg.data.batch_size < ddp.world):
        last = len(dataset.train) % cfg.data.batch_size
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: with {ddp.world} ranks every training batch needs at "
                          f"least {ddp.world} samples" + (f", and the last one holds {last}" if last else "")
                          + "; choose another batch size")
    generator = torch.Generator().manual_seed(cfg.seed)

    # Everything that can be wrong with the input has been checked: only now touch the disk.
    run = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    state = {"epoch": -1, "best_epoch": -1, "best_score": math.inf, "best_val": None}
    if resume:
        if not (run / "last.pt").is_file():
            raise RunError(f"{run}: no last.pt to resume from (a run that died before its first epoch is started "
                           "again without --resume)")
        ckpt = load_checkpoint(run / "last.pt", device)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            strategy.load_state_dict(ckpt["strategy"])
            torch.set_rng_state(ckpt["rng"])
            generator.set_state(ckpt["generator"])
            state = dict(ckpt["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise RunError(f"{run / 'last.pt'}: does not fit this run's model and settings ({type(e).__name__}: "
                           f"{first}); start a new run with another --out") from None
        if state["best_epoch"] >= 0 and not (run / "best.pt").is_file():
            raise RunError(f"{run / 'best.pt'}: missing (the selected epoch's weights); the run cannot be finished, "
                           "start a new one with another --out")
        if ddp.is_main:  # rank 0 alone writes (two ranks rewriting one log raced under torchrun)
            _truncate_log(run / "metrics.jsonl", state["epoch"])
    else:
        ddp.on_main(lambda: create_run_dir(run, cfg), RunError)

    sign = 1.0 if lower_is_better(cfg.train.select) else -1.0
    probe = dataset.train.batch(torch.arange(min(len(dataset.train), cfg.data.batch_size))).to(device)
    steps_per_epoch = math.ceil(len(dataset.train) / cfg.data.batch_size)
    strategy.steps_per_epoch = steps_per_epoch
    strategy.batch_size = cfg.data.batch_size
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=quiet)
    with progress if not quiet else nullcontext():
        epochs_bar = progress.add_task("epochs", total=cfg.train.epochs, completed=state["epoch"] + 1)
        for epoch in range(state["epoch"] + 1, cfg.train.epochs):
            if epoch - state["best_epoch"] > cfg.train.patience and state["best_epoch"] >= 0:
                break
            t0 = time.perf_counter()
            set_epoch_lr(optimizer, cfg.train, epoch)
            strategy.on_epoch_start(epoch, dataset)
            model.train()
            sums: dict[str, float] = {}
            batch_bar = progress.add_task(f"epoch {epoch}", total=steps_per_epoch)
            for step, batch in enumerate(dataset.train.batches(cfg.data.batch_size, shuffle=True, generator=generator)):
                with autocast(device, cfg.train.amp):  # torchrun: this rank's shard, logs of the whole batch
                    logs = ddp.average_logs(strategy.train_step(ddp.shard(batch).to(device, non_blocking=True)))
                if not math.isfinite(logs["loss"]):
                    raise RunError(f"non-finite training loss at epoch {epoch} step {step}; lower train.lr or set train.grad_clip")
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v * len(batch)
                progress.advance(batch_bar)
            progress.remove_task(batch_bar)
            val = evaluate(strategy, dataset.val, task, cfg.data.batch_size, device, cfg.train.amp)
            record = {"epoch": epoch, "train": {k: v / len(dataset.train) for k, v in sums.items()}, "val": val,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            if cfg.train.grad_probe:
                record["grad_norm"] = gradient_probe(model, probe, task)
                record["diag"] = diagnostics(model, probe, task)
            score = sign * val["multi"][cfg.train.select]
            # every rank holds the same weights, metrics and state: rank 0 writes them
            if score < state["best_score"]:
                state.update(best_epoch=epoch, best_score=score, best_val=val)
                if ddp.is_main:
                    _atomic_save({"model": model.state_dict(), "epoch": epoch}, run / "best.pt")
            state["epoch"] = epoch
            if ddp.is_main:
                with open(run / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(_jsonable(record)) + "\n")
                _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "strategy": strategy.state_dict(), "rng": torch.get_rng_state(),
                              "generator": generator.get_state(), "state": state}, run / "last.pt")
            progress.advance(epochs_bar)
            head = task.headline
            console.print(f"epoch {epoch:3d}  train loss {record['train']['loss']:.4f}  val {cfg.train.select} "
                          f"{val['multi'][cfg.train.select]:.4f}  val {head} {val['multi'][head]:.4f}"
                          + ("  *" if state["best_epoch"] == epoch else ""))
            if on_epoch is not None:
                on_epoch(epoch, val)

    if state["best_epoch"] < 0:
        raise RunError(f"{run}: no epoch was trained (train.epochs={cfg.train.epochs})")
    ddp.barrier()  # rank 0 has written best.pt
    model.load_state_dict(load_checkpoint(run / "best.pt", device)["model"])
    test = evaluate(strategy, dataset.test, task, cfg.data.batch_size, device, cfg.train.amp)
    results = {"task": dataset.task, "val": state["best_val"], "test": test, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"] + 1, "config": cfg.to_dict(),
               # every setting the strategy ran with, its code defaults included (config.json holds
               # only what was given): `cli.py table` tells from it that a default has changed since
               "strategy_settings": asdict(cfg.strategy.settings)}
    if cfg.train.probe and ddp.is_main:  # the selected epoch's encoders, frozen, each with a linear probe
        t0 = time.perf_counter()
        results["probe"] = probe_encoders(model, dataset, task, cfg.data.batch_size)
        results["probe_seconds"] = time.perf_counter() - t0
    if ddp.is_main:
        _atomic_json(results, run / "results.json")
    ddp.barrier()  # the run is complete on disk before any rank returns
    results["run_dir"] = str(run)
    return results


def _truncate_log(path: Path, last_epoch: int) -> None:
    """Drop log lines of epochs after the checkpoint (a crash between log and checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= last_epoch]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
