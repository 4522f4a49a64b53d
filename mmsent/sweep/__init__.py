"""Hyper-parameter sweeps with Optuna, one module per job: ``spec`` (the YAML spec and its search
space, checked without data), ``storage`` (where a study lives, dead trials failed), ``runner``
(``Sweep``: the study, the objective over seeds, Ctrl-C) and ``report`` (rows, best trial, apply,
plot, markdown record). The names below are what the CLI and the tests use."""
from mmsent.sweep.report import apply_best, best_trial, fmt, plot, trial_rows, write_report
from mmsent.sweep.runner import FINISHED, Sweep, check_space, study_key, trial_config
from mmsent.sweep.spec import Param, SweepError, SweepSpec, load_spec
from mmsent.sweep.storage import fail_dead_local_trials, make_storage, worker_id

__all__ = ["FINISHED", "Param", "Sweep", "SweepError", "SweepSpec", "apply_best", "best_trial", "check_space",
           "fail_dead_local_trials", "fmt", "load_spec", "make_storage", "plot", "study_key", "trial_config",
           "trial_rows", "worker_id", "write_report"]
