"""Recipes and the config a command runs with, for every command alike (train, table, sweep).

The recipes ship inside the package, found with ``importlib.resources``, so an installed mmsent
trains from any directory:

* ``configs/<dataset>.yaml``: each dataset's training recipe, the default config of ``train``,
  ``table`` and ``sweep``;
* ``sweeps/<name>.yaml``: the sweep specs (``mmsent sweep alpha``).

A user's own YAML path is always accepted and wins over a shipped file of the same relative name.
In a checkout, ``configs/`` and ``sweeps/`` at the top are links to these folders.
"""
from __future__ import annotations

import sys
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

from mmsent.checks import ConfigError
from mmsent.config import Config, load_config
from mmsent.strategies import STRATEGIES

HOME = Path(str(files("mmsent")))
CONFIGS, SWEEPS = HOME / "configs", HOME / "sweeps"


def recipe(dataset: str | None) -> Path | None:
    """The shipped recipe of ``dataset`` (the synthetic one when None), if there is one."""
    path = CONFIGS / f"{dataset or 'synthetic'}.yaml"
    return path if path.is_file() else None


def sweep_spec(name_or_path: str) -> Path:
    """A sweep spec: a path to a YAML file, or the name of a shipped spec (``alpha``)."""
    path = Path(name_or_path)
    if path.suffix:
        return path
    path = SWEEPS / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEPS.glob("*.yaml")))
        raise ConfigError(f"{name_or_path}: no such sweep (shipped sweeps: {known}); or pass a YAML path")
    return path


def resolve(path: str | Path) -> Path:
    """A config path as written in a sweep spec (``configs/mosi.yaml``): the user's own file when it
    exists from the working directory, else the shipped file of that name."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    shipped = HOME / path
    return shipped if shipped.exists() else path


def train_argv(*, dataset=None, data=None, config=None, seed=None, out=None, overrides=()) -> list[str]:
    """The ``train`` command line of ``train_config``'s keywords: a table describes each run once,
    as these keywords, and both starts it and checks a finished one against them."""
    flags = {"--dataset": dataset, "--data": data, "--config": config, "--seed": seed, "--out": out}
    return [t for flag, v in flags.items() if v is not None for t in (flag, str(v))] + [str(o) for o in overrides]


def _flags(dataset, data, fusion, strategy, alpha, seed, epochs, out, device) -> list[tuple[str, object]]:
    """``alpha``: (the strategy's setting that ``--alpha`` sets, its value), or None."""
    pairs = [("data.dataset", dataset), ("data.path", data), ("model.fusion", fusion), ("strategy.name", strategy),
             *([(f"strategy.{alpha[0]}", alpha[1])] if alpha else []), ("seed", seed), ("train.epochs", epochs),
             ("out", out), ("device", device)]
    return [(k, v) for k, v in pairs if v is not None]


def _model_the_strategy_needs(cfg: Config, config, fusion, overrides, notes: bool) -> list[tuple[str, object]]:
    """Model settings a strategy cannot do without (MMCosine: a linear late-fusion head) replace the
    recipe's defaults, with a note; a value the user chose (``--fusion``, ``model.KEY=``, their own
    ``--config``) is kept, and the strategy refuses it with one line."""
    strategy = STRATEGIES.get(cfg.strategy.name)
    if strategy is None or config:
        return []
    chosen = {"fusion"} if fusion else set()
    chosen |= {str(o).split("=", 1)[0].removeprefix("model.") for o in overrides if str(o).startswith("model.")}
    if any(getattr(cfg.model, k) != v for k, v in strategy.needs_model.items() if k in chosen):
        return []  # the user's own head: the strategy says why it cannot use it
    needed = [(f"model.{k}", v) for k, v in strategy.needs_model.items() if getattr(cfg.model, k) != v]
    if needed and notes:
        print(f"note: strategy {cfg.strategy.name!r} needs " + " ".join(f"{k}={v}" for k, v in needed)
              + "; using it", file=sys.stderr)
    return needed


def train_config(*, dataset: str | None = None, data: str | None = None, config: str | None = None,
                 fusion: str | None = None, strategy: str | None = None, alpha: float | None = None,
                 seed: int | None = None, epochs: int | None = None, out: str | None = None,
                 device: str | None = None, overrides=(), resume: bool = False, notes: bool = True) -> Config:
    """The config ``train`` runs with: the recipe (``config`` or the dataset's shipped recipe), the
    flags and ``key=value`` overrides, a strategy's needed head; on ``resume`` the run's own
    config.json underneath. ``table`` calls it too, to tell whether a finished run was made with
    the same config, and ``sweep`` for its base config."""
    from mmsent.rundir import RunError, load_run_config

    overrides = list(overrides)

    def given(alpha_flag) -> list:  # the flags, then the key=value overrides
        return _flags(dataset, data, fusion, strategy, alpha_flag, seed, epochs, out, device) + overrides

    if resume:
        if not out:
            raise RunError("--resume needs --out DIR (the run to continue)")
        base = load_run_config(Path(out)).to_dict()
        if alpha is not None:  # which strategy --alpha would go to, before it is applied
            alpha = (_alpha_key(load_config(config, given(None), base=base)), alpha)
        return load_config(config, given(alpha), base=base)
    chosen = config or any(str(o).startswith("data.dataset=") for o in overrides)
    if dataset is None and data and not chosen:
        from mmsent.data import infer_dataset

        dataset = infer_dataset(data)
        if notes:
            print(f"note: --data {data} is read as dataset {dataset!r} (pass --dataset to choose another, "
                  "e.g. --dataset mosi for the MOSI recipe)", file=sys.stderr)
    path = config if config is not None else recipe(dataset)
    if alpha is not None:
        alpha = (_alpha_key(load_config(path, given(None))), alpha)
    cfg = load_config(path, given(alpha))
    needed = _model_the_strategy_needs(cfg, config, fusion, overrides, notes)
    return load_config(path, given(alpha) + needed) if needed else cfg


def flag_setting(strategy: str, flag: str) -> str | None:
    """The setting of ``strategy`` that the CLI flag ``flag`` sets: the field of its ``Settings``
    that declares it (``field(..., metadata={"flag": "--alpha"})``), or None."""
    return next((f.name for f in fields(STRATEGIES[strategy].Settings) if f.metadata.get("flag") == flag), None)


def _alpha_key(cfg: Config) -> str:
    """``--alpha`` is DGL's weight on the unimodal losses, declared by the settings that have it;
    for a strategy whose ``alpha`` means something else (OGM-GE's tanh slope, AGM's strength) or
    that has none it is refused rather than silently setting that."""
    key = flag_setting(cfg.strategy.name, "--alpha")
    if key is None:
        dgl = ", ".join(n for n in STRATEGIES if flag_setting(n, "--alpha"))
        raise ConfigError(f"--alpha is DGL's weight on the unimodal losses ({dgl}); strategy {cfg.strategy.name!r} has "
                          "no such weight: set its own settings with strategy.KEY=VALUE")
    return key
