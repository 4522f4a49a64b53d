"""A sweep spec: ``sweeps/<name>.yaml`` (or a user's YAML) checked field by field, its search
space mapped onto ``trial.suggest_*``. Needs neither data nor Optuna."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mmsent.config import ConfigError, SettingError, check, from_dict, load_yaml
from mmsent.recipes import SWEEPS, sweep_spec


class SweepError(ValueError):
    """Bad sweep spec or storage; the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class Param:
    """One dimension of the search space, ``space.<dotted config key>`` in the spec."""

    name: str = ""  # the dotted config key, e.g. strategy.alpha (the space's key, set by load_spec)
    type: str = "float"  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list] = None  # categorical values
    grid: Optional[list] = None  # values for sampler: grid

    def __post_init__(self):
        check("type", self.type in ("float", "int", "categorical"), self.type, "float, int or categorical")
        if self.type == "categorical":
            check("choices", bool(self.choices), self.choices, "a non-empty list for a categorical parameter")
            return
        if self.low is None or self.high is None:
            raise SettingError("low", "and 'high' are needed for a float or int parameter")
        if not self.low < self.high:
            raise SettingError("low", f"and high make an empty range [{self.low}, {self.high}] (need low < high)")
        check("low", not self.log or self.low > 0, self.low, "> 0 for a log range")
        for v in self.grid or []:
            check("grid", isinstance(v, (int, float)) and not isinstance(v, bool), self.grid, "a list of numbers")

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


@dataclass(frozen=True)
class SweepSpec:
    """A sweep spec; its fields are the keys of the YAML file, checked by the config's one mechanism
    (``config.from_dict``: unknown keys, types, then each ``__post_init__``'s ranges)."""

    name: str = ""  # the file's stem (set by load_spec, not a key of the file)
    config: Optional[str] = None  # base training config, relative to the repo root
    overrides: list[str] = field(default_factory=list)
    metric: str = "loss"  # validation metric of the multimodal model
    direction: str = "minimize"
    trials: int = 20
    seeds: list[int] = field(default_factory=lambda: [0])
    sampler: str = "tpe"  # tpe | grid
    sampler_seed: int = 0
    pruner_warmup_epochs: int = 3
    heartbeat: int = 30  # seconds between heartbeats of a running trial (RDB storages)
    space: dict[str, Param] = field(default_factory=dict)

    def __post_init__(self):
        check("space", bool(self.space), self.space, "a non-empty search space")
        check("direction", self.direction in ("minimize", "maximize"), self.direction, "minimize or maximize")
        check("sampler", self.sampler in ("tpe", "grid"), self.sampler, "tpe or grid")
        if self.sampler == "grid":
            for key, p in self.space.items():
                check(f"space.{key}.grid", bool(p.grid), p.grid, "a list of values (sampler grid needs one per parameter)")
        check("trials", self.trials >= 1, self.trials, ">= 1")
        check("seeds", bool(self.seeds) and all(s >= 0 for s in self.seeds), self.seeds, "a non-empty list of integers >= 0")
        check("heartbeat", self.heartbeat >= 1, self.heartbeat, ">= 1")
        check("pruner_warmup_epochs", self.pruner_warmup_epochs >= 0, self.pruner_warmup_epochs, ">= 0")

    @property
    def params(self) -> list[Param]:
        return list(self.space.values())


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
        if "name" in raw:  # the study's name is the file's (or --study)
            raise ConfigError("unknown config key 'name'; a sweep is named by its file (or --study)")
        space = raw.get("space")
        if isinstance(space, dict):  # each parameter knows its key (a trial's parameter name)
            for k, v in space.items():
                if isinstance(v, dict) and "name" in v:
                    raise ConfigError(f"unknown config key 'space.{k}.name'; a parameter is named by its key")
            raw = {**raw, "space": {k: {**v, "name": k} if isinstance(v, dict) else v for k, v in space.items()}}
        return from_dict(SweepSpec, {**raw, "name": path.stem})
    except ConfigError as e:  # the config's wording, with the spec's file in front
        message = str(e).replace("config key", "key").replace("config section", "section")
        raise SweepError(message if message.startswith(str(path)) else f"{path}: {message}") from None
