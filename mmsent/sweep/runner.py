"""Running a sweep with Optuna: a YAML spec (``sweeps/<name>.yaml``) mapped onto
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

import hashlib
import json
import logging
import signal
import statistics
import sys
import uuid
from pathlib import Path


from mmsent.config import ConfigError, load_config, set_dotted
from mmsent.data import build_dataset
from mmsent.files import FileError
from mmsent.interrupt import Interrupted
from mmsent.recipes import resolve
from mmsent.sweep.spec import SweepError, SweepSpec
from mmsent.sweep.storage import fail_dead_local_trials, make_storage, mask_secret, scrub, worker_id
from mmsent.tasks import metric_names
from mmsent.train import fit


FINISHED = ("COMPLETE", "PRUNED")


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


def trial_config(config: str | None, overrides: list, values: dict, seed: int, out: str | None = None):
    extra = [(k, v) for k, v in values.items()] + [("seed", seed)] + ([("out", out)] if out else [])
    return load_config(config, list(overrides) + extra)


def check_space(spec: SweepSpec, config: str | None, overrides: list):
    """The base config, with every parameter at each edge of its range: all must be valid. Needs no
    data: a spec and its space are checked on their own (``Sweep`` then loads the data once)."""
    try:
        for p in spec.params:
            for value in p.extremes():
                trial_config(config, overrides, {p.name: value}, 0)
        return trial_config(config, overrides, {}, 0)
    except ConfigError as e:
        raise SweepError(f"sweep {spec.name!r}: {e}") from None


class Sweep:
    def __init__(self, spec: SweepSpec, *, config: str | None, overrides: list, storage: str | None,
                 study: str | None, trials: int | None, out_dir: str = "runs/sweeps", planning: bool = False):
        self.spec, self.overrides = spec, list(spec.overrides) + list(overrides)
        self.config = config or (str(resolve(spec.config)) if spec.config else None)
        self.trials = trials or spec.trials
        self.out_dir = Path(out_dir)
        self._validate(planning)  # config, space and data: a bad one stops here, before any trial
        self.study_name = study or study_key(spec, self.base_cfg)
        self.storage_url = storage or f"sqlite:///{self.out_dir / self.study_name}.db"
        self.storage_shown = mask_secret(self.storage_url)  # what is printed, logged and recorded

    def _cfg(self, values: dict, seed: int, out: str | None = None):
        return trial_config(self.config, self.overrides, values, seed, out)

    def _validate(self, planning: bool) -> None:
        """Every parameter names a real config key whose whole range is valid, the data loads and
        the metric belongs to its task -- all before any trial runs."""
        cfg = check_space(self.spec, self.config, self.overrides)
        # a DataError ends the command in one line; loaded once per worker (a dry run builds no cache)
        self._dataset = build_dataset(cfg.data, planning=planning)
        for work in self._dataset.deferred:
            print(f"note: the sweep would {work.note} first", file=sys.stderr)
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
            raise SweepError(f"storage {self.storage_shown!r}: cannot open study {self.study_name!r}: "
                             f"{scrub(str(e), self.storage_url)}") from None
        if existing.direction.name.lower() != self.spec.direction:
            raise SweepError(f"study {self.study_name!r} in {self.storage_shown} was created to {existing.direction.name.lower()}, "
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
                if isinstance(e, FileError) or isinstance(e.__cause__, FileError) or "cannot write" in str(e):
                    trial.set_user_attr("fatal", str(e))  # a full disk fails every trial alike: stop the sweep
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

        fatal = []

        def announce(study, trial):
            if trial.user_attrs.get("fatal"):
                fatal.append(trial.user_attrs["fatal"])
                study.stop()
                return
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
        if fatal:
            raise SweepError(f"study {self.study_name!r} stopped: {fatal[0]}")
        return study


class _QuietInterrupts(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as a failure with its traceback (and then its value);
    the sweep says it in one line instead, so both records are dropped. Any other failed trial is
    logged as Optuna's one line naming the error, without the traceback."""

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
        if record.exc_info:  # a failed trial: its one-line message (which names the error), not the traceback
            record.exc_info, record.exc_text = None, None
        return True
