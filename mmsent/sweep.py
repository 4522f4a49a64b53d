"""Hyper-parameter sweeps with Optuna: a YAML spec (``sweeps/<name>.yaml``) mapped onto
``trial.suggest_*``, the objective a validation metric averaged over seeds.

* TPE with a seed (or a grid, for paper-style alpha in {1, ..., 5}); MedianPruner on the first
  seed's per-epoch validation metric.
* The study is named after the spec, the dataset, the data file and the rest of the base config
  (``alpha-mosi-mosi_utterance-1a2b3c``), so different data or settings never share a study; storage
  defaults to ``sqlite:///runs/sweeps/<study>.db``. Re-running the same command resumes the study
  and only runs the trials still missing.
* A killed trial never stays RUNNING: each trial records its host and process, and a restart on
  that host fails the trials of processes that are gone; RDB storages also keep a heartbeat, which
  fails a dead trial of another host after two missed beats.
* Trial runs go to ``<out>/<study>-<token>/trial-NNNN/seed-S``, the token made when the study is
  created, so a new study under an old name (a fresh storage) never meets the old study's runs.
* Several processes pointed at one storage URL share the study (SQLite or ``journal:PATH`` on one
  machine; ``postgresql://`` / ``mysql://`` across machines). ``MaxTrialsCallback`` stops every
  worker once the study holds ``trials`` finished trials.
* Test metrics are stored as trial user attributes and never optimised.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import statistics
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmsent.config import ConfigError, load_config, load_yaml, set_dotted
from mmsent.data import build_dataset
from mmsent.files import write_atomic, write_failed, write_text
from mmsent.interrupt import Interrupted
from mmsent.recipes import SWEEPS, resolve, sweep_spec
from mmsent.tasks import metric_names
from mmsent.train import fit

FINISHED = ("COMPLETE", "PRUNED")


class SweepError(ValueError):
    """Bad sweep spec or storage; the CLI prints it on one line and exits 2."""


@dataclass
class Param:
    name: str  # dotted config key, e.g. strategy.args.alpha
    type: str = "float"  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None  # categorical values
    grid: list | None = None  # values for sampler: grid

    def check(self) -> None:
        if self.type not in ("float", "int", "categorical"):
            raise SweepError(f"space.{self.name}: type must be float, int or categorical, got {self.type!r}")
        if self.type == "categorical":
            if not self.choices:
                raise SweepError(f"space.{self.name}: categorical needs a non-empty 'choices' list")
            return
        if self.low is None or self.high is None:
            raise SweepError(f"space.{self.name}: needs 'low' and 'high'")
        if not self.low < self.high:
            raise SweepError(f"space.{self.name}: empty range [{self.low}, {self.high}] (need low < high)")
        if self.log and self.low <= 0:
            raise SweepError(f"space.{self.name}: a log range needs low > 0, got {self.low}")

    def suggest(self, trial):
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def extremes(self) -> list:
        """Every value a trial could be given at the edges of the space: checked before any trial."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return sorted({cast(self.low), cast(self.high), *map(cast, self.grid or [])})


@dataclass
class SweepSpec:
    name: str
    config: str | None = None  # base training config, relative to the repo root
    overrides: list = field(default_factory=list)
    metric: str = "loss"  # validation metric of the multimodal model
    direction: str = "minimize"
    trials: int = 20
    seeds: list = field(default_factory=lambda: [0])
    sampler: str = "tpe"  # tpe | grid
    sampler_seed: int = 0
    pruner_warmup_epochs: int = 3
    heartbeat: int = 30  # seconds between heartbeats of a running trial (RDB storages)
    space: dict = field(default_factory=dict)

    @property
    def params(self) -> list[Param]:
        return [Param(k, **v) for k, v in self.space.items()]


SPEC_TYPES = {"config": str, "overrides": list, "metric": str, "direction": str, "trials": int, "seeds": list,
              "sampler": str, "sampler_seed": int, "pruner_warmup_epochs": int, "heartbeat": int, "space": dict}


def load_spec(name_or_path: str) -> SweepSpec:
    try:
        path = sweep_spec(name_or_path)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEPS.glob("*.yaml")))
        raise SweepError(f"{path}: sweep spec not found (shipped sweeps: {known})")
    try:
        raw = load_yaml(path)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    fields = {f.name for f in dataclasses.fields(SweepSpec)} - {"name"}
    unknown = sorted(map(str, set(raw) - fields))
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}; a sweep spec has {', '.join(sorted(fields))}")
    for key, want in SPEC_TYPES.items():  # a value of the wrong kind would fail deep inside Optuna
        if key in raw and not (isinstance(raw[key], want) and not (want is int and isinstance(raw[key], bool))):
            kind = {dict: "a mapping", list: "a list", int: "an integer", str: "a string"}[want]
            raise SweepError(f"{path}: {key!r} must be {kind}, got {raw[key]!r:.60}")
    for key, entry in (raw.get("space") or {}).items():
        if not isinstance(entry, dict):
            raise SweepError(f"{path}: space.{key} must be a mapping (type, low, high...), got {entry!r:.60}")
        bad = sorted(set(map(str, entry)) - ({f.name for f in dataclasses.fields(Param)} - {"name"}))
        if bad:
            raise SweepError(f"{path}: space.{key}: unknown key {bad[0]!r}")
        for k in ("low", "high"):
            if entry.get(k) is not None and (isinstance(entry[k], bool) or not isinstance(entry[k], (int, float))):
                raise SweepError(f"{path}: space.{key}.{k} must be a number, got {entry[k]!r:.60}")
        for k in ("choices", "grid"):
            if entry.get(k) is not None and not isinstance(entry[k], list):
                raise SweepError(f"{path}: space.{key}.{k} must be a list, got {entry[k]!r:.60}")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in raw.get("seeds") or []):
        raise SweepError(f"{path}: 'seeds' must be a list of integers >= 0, got {raw['seeds']!r:.60}")
    spec = SweepSpec(name=path.stem, **raw)
    params = spec.params
    if not params:
        raise SweepError(f"{path}: empty search space")
    for p in params:
        p.check()
    if spec.direction not in ("minimize", "maximize"):
        raise SweepError(f"{path}: direction must be minimize or maximize, got {spec.direction!r}")
    if spec.sampler not in ("tpe", "grid"):
        raise SweepError(f"{path}: sampler must be tpe or grid, got {spec.sampler!r}")
    if spec.sampler == "grid" and any(not p.grid for p in params):
        raise SweepError(f"{path}: sampler grid needs a 'grid' list for every parameter")
    if spec.trials < 1 or not spec.seeds:
        raise SweepError(f"{path}: needs trials >= 1 and at least one seed")
    return spec


def make_storage(url: str, heartbeat: int):
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # the heartbeat is "experimental": said here, not left global
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                    )
            except Exception as e:
                # Workers started together race to create the schema of a new database; the loser
                # sees a constraint error and simply opens what the winner made.
                if attempt == 4 or not any(s in str(e) for s in ("UNIQUE constraint", "already exists", "locked")):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception as e:  # driver missing, host unreachable, bad URL...
        raise SweepError(f"storage {url!r} is unreachable or invalid: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def study_key(spec: SweepSpec, cfg) -> str:
    """``<spec>-<dataset>[-<data file stem>]-<hash>``: the hash covers the data path and the base
    config without the swept keys, so a study never mixes trials of different data or settings."""
    tree = cfg.to_dict()
    for p in spec.params:
        set_dotted(tree, p.name, None)
    tree.pop("seed"), tree.pop("out")
    path = str(Path(cfg.data.path).resolve()) if cfg.data.path else ""
    digest = hashlib.sha1(json.dumps([path, tree], sort_keys=True, default=str).encode()).hexdigest()[:6]
    stem = f"-{Path(cfg.data.path).stem}" if cfg.data.path else ""
    return f"{spec.name}-{cfg.data.dataset}{stem}-{digest}"


class Sweep:
    def __init__(self, spec: SweepSpec, *, config: str | None, overrides: list, storage: str | None,
                 study: str | None, trials: int | None, out_dir: str = "runs/sweeps", quiet_console=None):
        self.spec, self.overrides = spec, list(spec.overrides) + list(overrides)
        self.config = config or (str(resolve(spec.config)) if spec.config else None)
        self.trials = trials or spec.trials
        self.out_dir = Path(out_dir)
        self.console = quiet_console
        self._validate()  # config, space and data: a bad one stops here, before any trial
        self.study_name = study or study_key(spec, self.base_cfg)
        self.storage_url = storage or f"sqlite:///{self.out_dir / self.study_name}.db"

    def _cfg(self, values: dict, seed: int, out: str | None = None):
        extra = [(k, v) for k, v in values.items()] + [("seed", seed)] + ([("out", out)] if out else [])
        return load_config(self.config, self.overrides + extra)

    def check_space(self):
        """The base config, with every parameter at each edge of its range: all must be valid."""
        try:
            for p in self.spec.params:
                for value in p.extremes():
                    self._cfg({p.name: value}, 0)
            return self._cfg({}, 0)
        except ConfigError as e:
            raise SweepError(f"sweep {self.spec.name!r}: {e}") from None

    def _validate(self) -> None:
        """Every parameter names a real config key whose whole range is valid, the data loads and
        the metric belongs to its task -- all before any trial runs."""
        cfg = self.check_space()
        self._dataset = build_dataset(cfg.data)  # a DataError ends the command in one line; loaded once per worker
        metrics = ["loss", *metric_names(self._dataset.task)]
        if self.spec.metric not in metrics:
            raise SweepError(f"sweep {self.spec.name!r}: unknown metric {self.spec.metric!r}; choose from {', '.join(metrics)}")
        self.base_cfg = cfg

    def study(self, worker: int = 0):
        import optuna

        storage = make_storage(self.storage_url, self.spec.heartbeat)
        try:
            existing = optuna.create_study(storage=storage, study_name=self.study_name, direction=self.spec.direction,
                                           load_if_exists=True)
        except Exception as e:
            raise SweepError(f"storage {self.storage_url!r}: cannot open study {self.study_name!r}: {e}") from None
        if existing.direction.name.lower() != self.spec.direction:
            raise SweepError(f"study {self.study_name!r} in {self.storage_url} was created to {existing.direction.name.lower()}, "
                             f"the spec says {self.spec.direction}; pass another --study")
        # The seed moves on with the study's length (and the worker index), so a resumed or second
        # worker does not replay the first worker's random start-up points.
        seed = self.spec.sampler_seed + len(existing.trials) + 1000 * worker
        sampler = (optuna.samplers.GridSampler({p.name: p.grid for p in self.spec.params}, seed=seed)
                   if self.spec.sampler == "grid" else optuna.samplers.TPESampler(seed=seed))
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=self.spec.pruner_warmup_epochs)
        study = optuna.load_study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=pruner)
        if "runs_token" not in study.user_attrs:  # made once per study; racing workers agree on the last write
            study.set_user_attr("runs_token", uuid.uuid4().hex[:8])
        fail_dead_local_trials(study)
        return study

    def trial_dir(self, study, number: int) -> Path:
        return self.out_dir / f"{self.study_name}-{study.user_attrs['runs_token']}" / f"trial-{number:04d}"

    def objective(self, trial) -> float:
        import optuna

        trial.set_user_attr("worker", worker_id())
        values = {p.name: p.suggest(trial) for p in self.spec.params}
        root = self.trial_dir(trial.study, trial.number)
        trial.set_user_attr("run_dir", str(root))
        per_seed, tests = [], []
        for i, seed in enumerate(self.spec.seeds):
            out = root / f"seed-{seed}"

            def report(epoch, val, first=(i == 0)):
                if first:  # prune on the first seed's curve: later seeds run only for promising values
                    trial.report(val["multi"][self.spec.metric], epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()

            try:
                res = fit(self._cfg(values, seed, str(out)), quiet=True, dataset=self._dataset, on_epoch=report)
            except optuna.TrialPruned:
                raise
            except Exception as e:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                raise
            per_seed.append(res["val"]["multi"][self.spec.metric])
            tests.append(res["test"])
        trial.set_user_attr("val_per_seed", per_seed)
        trial.set_user_attr("test", {b: {k: statistics.fmean(t[b][k] for t in tests if t[b][k] is not None)
                                         for k in tests[0][b]} for b in tests[0]})
        return statistics.fmean(per_seed)

    def run(self, progress=print, worker: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trial_log = logging.getLogger("optuna.study._optimize")  # where Optuna reports a failed trial
        if not any(isinstance(f, _QuietInterrupts) for f in trial_log.filters):
            trial_log.addFilter(_QuietInterrupts())
        study = self.study(worker)
        done = sum(t.state.name in FINISHED for t in study.trials)
        if done >= self.trials:
            progress(f"study {self.study_name!r} already holds {done} finished trials (of {self.trials}); nothing to run")
            return study

        def announce(study, trial):
            n = sum(t.state.name in FINISHED for t in study.trials)
            value = "-" if trial.value is None else f"{trial.value:.4f}"
            progress(f"trial {trial.number:3d} {trial.state.name.lower():8s} {self.spec.metric}={value} "
                     f"{trial.params}  [{n}/{self.trials} finished]")

        states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
        # n_trials bounds this worker even if every trial fails; the callback stops it as soon as the
        # shared study holds enough finished trials from any worker.
        try:
            study.optimize(self.objective, n_trials=self.trials - done,
                           callbacks=[optuna.study.MaxTrialsCallback(self.trials, states=states), announce],
                           catch=(Exception,))
        except KeyboardInterrupt as e:  # Optuna has marked the running trial failed; its run stays whole
            signum = getattr(e, "signum", signal.SIGINT)
            n = sum(t.state.name in FINISHED for t in study.trials)
            raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}: study {self.study_name!r} holds "
                              f"{n} finished trials (of {self.trials}), the one running is marked failed; run the "
                              "same command again to go on") from None
        return study


class _QuietInterrupts(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as a failure with its traceback (and then its value);
    the sweep says it in one line instead, so both records are dropped."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record) -> bool:
        if record.exc_info and record.exc_info[0] and issubclass(record.exc_info[0], KeyboardInterrupt):
            self.interrupted = True
            return False
        if self.interrupted and "failed with value" in record.getMessage():
            self.interrupted = False
            return False
        return True


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fail_dead_local_trials(study) -> list[int]:
    """Mark FAIL every RUNNING trial whose process ran on this host and is gone (killed, crashed):
    whatever the heartbeat timing, a restart then runs as many trials as are still missing."""
    import optuna

    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        name, _, pid = who.rpartition(":")
        if name == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    except OSError as e:
        raise write_failed(path, e) from None
    return path



def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def write_report(study, spec: SweepSpec, path: Path, command: str, png) -> None:
    """Markdown record of a sweep: the command, every trial, the best value."""
    keys = [p.name for p in spec.params]
    rows = trial_rows(study)
    # the task's own headline test metrics: MOSI-style regression or classification
    regression = any("acc2_has0" in ((r["test"] or {}).get("multi") or {}) for r in rows)
    shown = ("acc2_has0", "mae") if regression else ("acc", "f1")
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(path, e) from None
    write_text(path, "\n".join(lines) + "\n")
