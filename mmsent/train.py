"""The one training loop: ``fit(cfg)`` trains with any strategy, selects the epoch on validation
only, and scores the test split once, on that epoch's checkpoint.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``best.pt`` and
``last.pt`` (both written atomically) and, when done, ``results.json``. ``resume=True`` continues
from ``last.pt`` with the same RNG streams, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmsent.checks import PLANNING, command, first_line, host_memory, is_out_of_memory
from mmsent.config import RESUMABLE, Config, ConfigError, choose, differences
from mmsent.data import Dataset, DataError, Split, build_dataset
from mmsent.distributed import Dist, init_from_env, lost_peer
from mmsent.files import FileError, append_line, jsonable, read_log, save_torch, write_json
from mmsent.predictions import PREDICTIONS, data_fingerprint, data_signature, write_predictions
from mmsent.provenance import now, provenance
from mmsent.tracking import Trackers, check_available
from mmsent.interrupt import ignore_stop_signals, Interrupted, StopAtSafePoint
from mmsent.models import BertEncoder, MultimodalModel, build_model, evaluating
from mmsent.probe import probe_encoders
from mmsent.rundir import (RunError, RunFolder, default_run_dir, load_checkpoint, load_run_config,  # noqa: F401
                           saved_epoch, truncate_log)
from mmsent.strategies import STRATEGIES
from mmsent.tasks import build_task, lower_is_better, metric_names


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


def build_strategy(cfg: Config, model, optimizer, task, **loop):
    """The chosen strategy on its typed settings (``cfg.strategy.settings``, checked at config load)
    and the loop's context (``loop``: the process group, batch size, steps per epoch, smallest
    training batch); what only the model can tell (a unimodal modality that the data lacks) fails
    here, still before the run directory exists."""
    cls = choose(STRATEGIES, "strategy", cfg.strategy.name)
    if task.name == "segmentation" and not cls.dense_ok:
        dense = ", ".join(n for n, c in STRATEGIES.items() if c.dense_ok)
        raise ConfigError(f"strategy {cfg.strategy.name!r} is not defined for dense prediction: it needs per-sample "
                          f"logits, scores or prototypes; choose from {dense}")
    try:
        return cls(model, optimizer, task, grad_clip=cfg.train.grad_clip, **loop, **asdict(cfg.strategy.settings))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"strategy {cfg.strategy.name!r}: {e}") from None


def evaluate(strategy, split: Split, task, batch_size: int, device, amp: bool = False) -> dict[str, dict[str, float]]:
    """Metrics of the full model ("multi") and of every modality branch (the others zeroed)."""
    return evaluate_with_predictions(strategy, split, task, batch_size, device, amp)[0]


def evaluate_with_predictions(strategy, split: Split, task, batch_size: int, device, amp: bool = False):
    """``evaluate``'s metrics and the branch predictions they were computed from (none for a
    task scored from per-batch sums, ``task.summary``: segmentation)."""
    if hasattr(task, "summary"):
        with autocast(device, amp):
            sums = strategy.branch_summaries(split, batch_size)
        return {k: task.from_summary(s) for k, s in sums.items()}, None
    with autocast(device, amp):
        preds = strategy.branch_predictions(split, batch_size)
    return {k: {"loss": float(task.loss(p, split.y)), **task.metrics(p, split.y)} for k, p in preds.items()}, preds


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


def fit(cfg: Config, *, resume: bool = False, quiet: bool = False, dataset: Dataset | None = None,
        on_epoch=None, command_line: str | None = None, dry_run: bool = False) -> dict:
    """Train one model and return ``results`` (also written to ``<run>/results.json``).

    ``dry_run``: every check a run makes (config, data, model size, strategy), then the plan --
    nothing is written. ``command_line`` is the command line recorded in the run's provenance (default: this process's).

    ``on_epoch(epoch, val)`` is called after each epoch's validation (a sweep reports it to its
    pruner); it may raise to stop the run, which then stays resumable from ``last.pt``.
    """
    device = resolve_device(init_from_env(cfg.device))  # under torchrun: join the group, pick this rank's GPU
    ddp = Dist()
    console = Console(quiet=quiet or not ddp.is_main, stderr=True)  # rank 0 alone speaks and writes
    if cfg.train.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.amp=true uses bfloat16 autocast, which this GPU does not support; set train.amp=false")
    planning = PLANNING.set(PLANNING.get() or dry_run)
    try:
        dataset = dataset or build_dataset(cfg.data)
    finally:
        PLANNING.reset(planning)
    if cfg.train.select != "loss" and cfg.train.select not in metric_names(dataset.task):
        raise ConfigError(f"train.select {cfg.train.select!r} is not a metric of this {dataset.task} task; "
                          f"choose from loss, {', '.join(metric_names(dataset.task))}")
    if len(dataset.modalities) < 2 and cfg.strategy.name != "unimodal":  # README: N >= 2 modalities
        raise ConfigError(f"the data holds one modality ({', '.join(dataset.modalities)}); strategy "
                          f"{cfg.strategy.name!r} needs two or more (strategy 'unimodal' trains one alone)")
    task = build_task(dataset.task, dataset.num_classes, dataset.class_weights)
    if device.type == "cuda" and dataset.kinds:  # image inputs of one size: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    check_model_fits(cfg, dataset, task.out_dim, device)
    try:
        model = build_model(cfg.model, dataset, task.out_dim).to(device)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise ConfigError(f"the model does not fit in {device.type} memory ({first_line(e)}); choose smaller "
                          "model sizes (model.dim, model.hidden, model.width)") from None
    optimizer = build_optimizer(model, cfg.train)
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if ddp.world > 1 and batch_norm:
        # SyncBatchNorm is CUDA-only and the masked passes use functional (vmap) BatchNorm, so the
        # training statistics stay per shard: equivalent in distribution, not bitwise, to one process.
        console.print(f"note: BatchNorm statistics are per rank ({ddp.world} shards of each batch), not synchronised")
    if ddp.active and (cfg.data.batch_size < ddp.world or 0 < len(dataset.train) % cfg.data.batch_size < ddp.world):
        last = len(dataset.train) % cfg.data.batch_size
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: with {ddp.world} ranks every training batch needs at "
                          f"least {ddp.world} samples" + (f", and the last one holds {last}" if last else "")
                          + "; choose another batch size")
    # Training BatchNorm cannot normalise one sample: a batch of one is refused, a last batch of one
    # joins the batch before it (said once, here).
    min_batch = 2 if batch_norm else 1
    if batch_norm and (cfg.data.batch_size < 2 or len(dataset.train) < 2):
        what = (f"data.batch_size={cfg.data.batch_size}" if cfg.data.batch_size < 2
                else f"the train split holds {len(dataset.train)} sample")
        raise ConfigError(f"{what}: the model has BatchNorm layers (fusion {cfg.model.fusion!r}), which need at least "
                          "2 samples per training batch; use data.batch_size >= 2 and a train split of 2 or more")
    if batch_norm and len(dataset.train) % cfg.data.batch_size == 1 and len(dataset.train) > 1 and ddp.is_main:
        print(f"note: the last training batch would hold 1 sample, which BatchNorm cannot train on; it joins "
                      f"the batch before it ({cfg.data.batch_size + 1} samples)", file=sys.stderr)
    strategy = build_strategy(cfg, model, optimizer, task, dist=ddp, batch_size=cfg.data.batch_size, min_batch=min_batch,
                              steps_per_epoch=dataset.train.n_batches(cfg.data.batch_size, min_batch),
                              epochs=cfg.train.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)

    trackers = [n.strip() for n in cfg.train.log.split(",")]
    check_available(trackers)  # a missing tensorboard / wandb package: one line, nothing written
    # Everything that can be wrong with the input has been checked: only now touch the disk.
    run = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if dry_run:
        RunFolder.check(run, resume)
        return {"dry_run": True, "run_dir": str(run), "config": cfg.to_dict(), "data": data_signature(dataset),
                "sizes": {s: len(getattr(dataset, s)) for s in ("train", "val", "test")},
                "parameters": sum(p.numel() for p in model.parameters()), "steps_per_epoch": strategy.steps_per_epoch,
                "schedule": strategy.schedule}
    if resume:  # a run is one run: the resumed config must be the run's own, but for its budget
        stored = load_run_config(run).to_dict() if (run / "config.json").is_file() else None
        changed = [d for d in differences(stored, cfg.to_dict()) if not d.startswith(RESUMABLE)] if stored else []
        if changed:
            raise RunError(f"{run}: --resume continues the same run, but {changed[0]}"
                           + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
                           + "; only train.epochs (and device, train.log, the folder's place) may change: start a new run with another --out")
    state = {"epoch": -1, "best_epoch": -1, "best_score": math.inf, "best_val": None,
             "data": data_fingerprint(dataset)}
    folder: list[RunFolder] = []  # rank 0's handle (the lock); other ranks never write
    track: list[Trackers] = []
    ddp.on_main(lambda: folder.append(RunFolder.open(run, cfg, resume)), RunError)
    try:
        with StopAtSafePoint() as stop:
            here = provenance(device, cfg.train.amp, ddp, command_line)  # a resumed run adds a line of its own
            track.append(Trackers(trackers, run, cfg.to_dict(), active=ddp.is_main))
            results = _fit_in(cfg, run, resume, state, dataset, task, model, optimizer, strategy, generator,
                              device, ddp, console, quiet, on_epoch, stop, min_batch, here, track[0])
            if stop.requested and ddp.is_main:  # it came after the last safe point: nothing was cut short
                print(f"note: {signal.Signals(stop.signum).name} arrived as the run ended; {run} is complete "
                      "(results.json written)", file=sys.stderr)
            return results
    except BaseException as e:
        unsaved = folder and folder[0].fresh and not (run / "last.pt").is_file()
        if unsaved:  # nothing to resume: leave no folder behind that would block the next run
            folder[0].discard()
        if isinstance(e, Interrupted):
            raise Interrupted(e.signum, f"interrupted by {signal.Signals(e.signum).name}: "
                              + (f"no epoch of {run} had finished, so nothing was kept; run the same command again"
                                 if unsaved else f"{run} holds epochs 0-{saved_epoch(run)}; continue with: "
                                 f"{command()} train --out {run} --resume")) from None
        lost = lost_peer(e)
        if lost:  # the job is over; torchrun's own summary follows and names the exit code
            ignore_stop_signals()  # torchrun now SIGTERMs every rank: let this line out first
            raise RunError(lost + ("" if unsaved else f"; {run} holds epochs 0-{saved_epoch(run)}, continue by "
                              "launching the same job with --resume")) from None
        if isinstance(e, (MemoryError, RuntimeError)) and is_out_of_memory(e):
            raise RunError(f"out of memory while training ({first_line(e)[:120]}){largest_input(cfg, dataset)}; "
                           "lower data.batch_size or the model sizes"
                           + ("" if unsaved else f", then continue with: {command()} train --out {run} --resume")) from None
        if isinstance(e, FileError):
            raise RunError(str(e) + ("" if unsaved else "; the run stays resumable with --resume")) from None
        raise
    finally:
        if track:
            track[0].close()
        if folder:
            folder[0].close()


def memory_bytes(device: torch.device) -> int | None:
    """Total memory of the device a model trains on (None: unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return host_memory()


def check_model_fits(cfg: Config, dataset: Dataset, out_dim: int, device: torch.device) -> None:
    """Model sizes come from flags and files (``model.dim=10**6``): count the parameters on the meta
    device, which allocates nothing, and refuse a model whose training state -- weights, gradients
    and two Adam moments, 16 bytes a parameter -- exceeds the device's whole memory. A model the
    meta device cannot build (pretrained weights read from disk) is not pre-checked."""
    total = memory_bytes(device)
    if total is None or cfg.model.bert_path:
        return
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(cfg.model, dataset, out_dim, record_shapes=False).parameters())
    except (ConfigError, DataError):
        raise
    except Exception:
        return
    need = 16 * n
    if need > total:
        raise ConfigError(f"the model has {n / 1e9:.2f} G parameters and needs about {need / 2**30:.0f} GiB to train, "
                          f"more than the {total / 2**30:.0f} GiB of this {device.type} device; choose smaller model "
                          "sizes (model.dim, model.hidden, model.width) or fewer classes")
    check_inputs_fit(cfg, dataset, total - need, device)


# Past this many steps one LSTM call -- a single native call that no signal interrupts -- runs for
# minutes on a CPU (a 200,000-step file held 11 GB and ignored three SIGTERMs for 12 minutes).
LONG_SEQUENCE = 10_000


def sequence_inputs(cfg: Config, dataset: Dataset) -> dict[str, tuple[str, int, int]]:
    """Feature-sequence modalities and what reads them: ``{m: (encoder, steps, features)}`` (media
    and token modalities, whose sizes the corpus fixes, are left out)."""
    out = {}
    for m in dataset.modalities:
        x = getattr(dataset.train, "x", None)  # decoded corpora (FrameSet) hold no feature arrays
        x = x.get(m) if isinstance(x, dict) else None
        if m in dataset.kinds or m in dataset.token_modalities or x is None or getattr(x, "ndim", 0) != 3:
            continue
        name = cfg.model.encoders.get(m, cfg.model.encoder)
        if name == "auto":
            name = "lstm" if x.shape[1] > 1 else "mlp"
        out[m] = (name, int(x.shape[1]), int(x.shape[2]))
    return out


def activation_bytes(cfg: Config, dataset: Dataset) -> dict[str, int]:
    """A lower bound on what one training step keeps for the backward pass, per modality: the
    padded batch itself (B x L x F, float32), and for an LSTM the per-step state autograd saves,
    about 6 hidden-wide tensors (4 gates, cell, output) a direction a step. Order of magnitude, not
    an allocator's count -- enough to refuse a step that cannot fit before anything is allocated."""
    batch = min(cfg.data.batch_size, len(dataset.train))
    hidden = cfg.model.encoder_hidden or cfg.model.hidden or 128
    out = {}
    for m, (name, steps, features) in sequence_inputs(cfg, dataset).items():
        per_step = features + (2 * 6 * hidden if name == "lstm" else 0)  # bidirectional, one layer
        out[m] = 4 * batch * steps * per_step
    return out


def largest_input(cfg: Config, dataset: Dataset) -> str:
    """The data's share of an out-of-memory error: the sequence modality that takes the most, with
    its size and file (sizes that come from a file are not fixed by a smaller model)."""
    sizes = activation_bytes(cfg, dataset)
    if not sizes or not cfg.data.path:  # generated data's sizes are settings, named by the advice below
        return ""
    m = max(sizes, key=sizes.get)
    _, steps, features = sequence_inputs(cfg, dataset)[m]
    return f"; the largest input is modality {m!r} of {cfg.data.path}, {steps} steps x {features} features a sample"


def check_inputs_fit(cfg: Config, dataset: Dataset, free: int, device: torch.device) -> None:
    """Bounds before work: refuse a step whose activations cannot fit the device (naming the
    modality and its size, which come from the data file), and say so before starting an LSTM over
    a sequence so long that a single uninterruptible call runs for minutes."""
    sizes = activation_bytes(cfg, dataset)
    where = f" of {cfg.data.path}" if cfg.data.path else ""
    if sizes and sum(sizes.values()) > free:
        m = max(sizes, key=sizes.get)
        name, steps, features = sequence_inputs(cfg, dataset)[m]
        raise ConfigError(f"modality {m!r}{where} has {steps} steps x {features} features: one training step "
                          f"(data.batch_size={cfg.data.batch_size}, encoder {name!r}) needs about "
                          f"{sum(sizes.values()) / 2**30:.1f} GiB, more than the {max(free, 0) / 2**30:.1f} GiB "
                          f"this {device.type} device has; shorten or pool the sequences, or lower data.batch_size")
    for m, (name, steps, _) in sequence_inputs(cfg, dataset).items():
        if name == "lstm" and steps > LONG_SEQUENCE:
            print(f"warning: modality {m!r}{where} has {steps} steps; each LSTM pass over them is one native call "
                  "that Ctrl-C and SIGTERM wait for (minutes on a CPU); pool or cut the sequences, or use "
                  f"model.encoders.{m}=mlp", file=sys.stderr)


def optimizer_problem(optimizer: torch.optim.Optimizer) -> str | None:
    """What ``load_state_dict`` lets through but the next step trips on (a KeyError or a size
    mismatch deep inside Adam): per parameter, the same buffers as every other parameter, each a
    finite tensor of the parameter's shape, and a finite step count."""
    keys = None
    for i, p in enumerate(q for g in optimizer.param_groups for q in g["params"]):
        state = optimizer.state.get(p)
        if not state:
            continue
        if keys is None:
            keys = set(state)
        if set(state) != keys:
            return f"parameter {i} holds {sorted(state)}, the others {sorted(keys)}"
        for k, v in state.items():
            if k == "step":
                ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
                    (isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point())
                if not ok or not math.isfinite(float(v)) or float(v) < 0:
                    return f"parameter {i}: step is not a count"
            elif v is None:
                continue
            elif not isinstance(v, torch.Tensor) or v.shape != p.shape or not torch.isfinite(v).all():
                return f"parameter {i}: {k!r} is not a finite tensor of shape {tuple(p.shape)}"
    return None


def _fit_in(cfg, run, resume, state, dataset, task, model, optimizer, strategy, generator, device, ddp, console,
            quiet, on_epoch, stop, min_batch, here, trackers) -> dict:
    if resume:
        if not (run / "last.pt").is_file():
            raise RunError(f"{run}: no last.pt to resume from (a run that died before its first epoch is started "
                           "again without --resume)")
        ckpt = load_checkpoint(run / "last.pt", device)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            problem = optimizer_problem(optimizer)
            if problem:
                raise ValueError(f"optimizer state: {problem}")
            strategy.load_state_dict(ckpt["strategy"])
            torch.set_rng_state(ckpt["rng"])
            generator.set_state(ckpt["generator"])
            fingerprint = state["data"]
            state.update(ckpt["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"{run / 'last.pt'}: does not fit this run's model and settings ({type(e).__name__}: "
                           f"{first_line(e)[:160]}); start a new run with another --out") from None
        if state.get("data", fingerprint) != fingerprint:  # same settings, other contents: not the run's data
            raise RunError(f"{run}: --resume reads other data than the run started with (the same settings, other "
                           "contents); start a new run with another --out")
        state["data"] = fingerprint
        if state["best_epoch"] >= 0 and not (run / "best.pt").is_file():
            raise RunError(f"{run / 'best.pt'}: missing (the selected epoch's weights); the run cannot be finished, "
                           "start a new one with another --out")
        if ddp.is_main:  # rank 0 alone writes (two ranks rewriting one log raced under torchrun)
            truncate_log(run / "metrics.jsonl", state["epoch"])

    if ddp.is_main:
        append_line(run / "metrics.jsonl", json.dumps({"provenance": here}))
    sign = 1.0 if lower_is_better(cfg.train.select) else -1.0
    # a fixed training batch for the per-epoch gradient and diagnostics logs
    log_batch = dataset.train.batch(torch.arange(min(len(dataset.train), cfg.data.batch_size)), deferred=True).to(device)
    steps_per_epoch = strategy.steps_per_epoch
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=quiet)

    def stop_here() -> None:  # a safe point: every file on disk is whole and matches last.pt
        if stop.requested:
            raise Interrupted(stop.signum)

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
            for step, batch in enumerate(dataset.train.batches(cfg.data.batch_size, shuffle=True, generator=generator,
                                                               min_size=min_batch, deferred=True)):
                if not ddp.active:  # under torchrun the ranks must agree: they stop at the epoch's end
                    stop_here()
                with autocast(device, cfg.train.amp):  # torchrun: this rank's shard, logs of the whole batch
                    logs = ddp.average_logs(strategy.train_step(ddp.shard(batch, task.batch_weight).to(device, non_blocking=True)))
                if not math.isfinite(logs["loss"]):
                    raise RunError(f"non-finite training loss at epoch {epoch} step {step}; lower train.lr or set train.grad_clip")
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v * len(batch)
                progress.advance(batch_bar)
            progress.remove_task(batch_bar)
            val = evaluate(strategy, dataset.val, task, cfg.data.batch_size, device, cfg.train.amp)
            record = {"epoch": epoch, "train": {k: v / len(dataset.train) for k, v in sums.items()}, "val": val,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            if strategy.counts:  # what the method has done so far (cumulative): a method that never acts is seen
                record["actions"] = dict(strategy.actions)
            if cfg.train.grad_probe:
                record["grad_norm"] = gradient_probe(model, log_batch, task)
                record["diag"] = diagnostics(model, log_batch, task)
            score = sign * val["multi"][cfg.train.select]
            # every rank holds the same weights, metrics and state: rank 0 writes them. Order: best.pt,
            # the log line, last.pt -- a failure between leaves last.pt of the epoch before, which
            # --resume continues from (it cuts the log back and redoes this epoch, best.pt included).
            if score < state["best_score"]:
                state.update(best_epoch=epoch, best_score=score, best_val=val, best_actions=dict(strategy.actions))
                if ddp.is_main:
                    save_torch(run / "best.pt", {"model": model.state_dict(), "epoch": epoch})
            state["epoch"] = epoch
            if ddp.is_main:
                append_line(run / "metrics.jsonl", json.dumps(jsonable(record)))
                trackers.epoch(record)
                save_torch(run / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                             "strategy": strategy.state_dict(), "rng": torch.get_rng_state(),
                                             "generator": generator.get_state(), "state": state})
            progress.advance(epochs_bar)
            headline = task.headline
            console.print(f"epoch {epoch:3d}  train loss {record['train']['loss']:.4f}  val {cfg.train.select} "
                          f"{val['multi'][cfg.train.select]:.4f}  val {headline} {val['multi'][headline]:.4f}"
                          + ("  *" if state["best_epoch"] == epoch else ""))
            if on_epoch is not None:
                on_epoch(epoch, val)
            if ddp.active:  # every rank stops here if any was asked to (torchrun signals them all)
                if ddp.sum(float(stop.signum or 0)):
                    raise Interrupted(stop.signum or signal.SIGTERM)
            else:
                stop_here()

    if state["best_epoch"] < 0:
        raise RunError(f"{run}: no epoch was trained (train.epochs={cfg.train.epochs})")
    ddp.barrier()  # rank 0 has written best.pt
    best = load_checkpoint(run / "best.pt", device)
    if best.get("epoch", state["best_epoch"]) != state["best_epoch"]:
        raise RunError(f"{run / 'best.pt'}: holds epoch {best.get('epoch')} but the run selected epoch "
                       f"{state['best_epoch']} (a write was cut short); resume with the run's own train.epochs")
    model.load_state_dict(best["model"])
    test, test_preds = evaluate_with_predictions(strategy, dataset.test, task, cfg.data.batch_size, device, cfg.train.amp)
    results = {"task": dataset.task, "data": data_signature(dataset), "val": state["best_val"], "test": test, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"] + 1, "config": cfg.to_dict(),
               # every setting the strategy ran with, its code defaults included (config.json holds
               # only what was given): `cli.py table` tells from it that a default has changed since
               "strategy_settings": asdict(cfg.strategy.settings), "schedule": strategy.schedule}
    if strategy.counts:  # the method's actions up to the selected epoch's end, and over the whole run
        acted = state.get("best_actions") or dict.fromkeys(strategy.counts, 0)
        results["actions"] = {"selected_epoch": acted, "run": dict(strategy.actions)}
        if strategy.idle_is_vanilla:  # only then is a run without actions plain joint training
            results["never_acted"] = not any(acted.values())
        if results.get("never_acted") and ddp.is_main:
            print(f"note: {cfg.strategy.name} never acted before the selected epoch {state['best_epoch']} "
                  f"({', '.join(acted)}: 0), so the selected model is plain joint training"
                  + (f"; its schedule here: {', '.join(f'{k} {v}' for k, v in strategy.schedule.items())}"
                     if strategy.schedule else ""), file=sys.stderr)
    if cfg.train.probe and ddp.is_main:  # the selected epoch's encoders, frozen, each with a linear probe
        t0 = time.perf_counter()
        results["probe"] = probe_encoders(model, dataset, task, cfg.data.batch_size)
        results["probe_seconds"] = time.perf_counter() - t0
    if ddp.is_main:  # per-sample test predictions: `cli.py table` tests differences between methods on them
        if dataset.task != "segmentation":  # per-pixel maps are not a per-sample table
            write_predictions(run / PREDICTIONS, dataset.test, test_preds, dataset.task)
        starts = [r["provenance"]["started"] for r in read_log(run / "metrics.jsonl") if "provenance" in r]
        results["provenance"] = {**here, "started": starts[0], "resumed": starts[1:], "ended": now()}
        write_json(run / "results.json", results)
        trackers.results(results)
    ddp.barrier()  # the run is complete on disk before any rank returns
    results["run_dir"] = str(run)
    return results


