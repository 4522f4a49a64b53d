"""A sweep spec: ``sweeps/<name>.yaml`` (or a user's YAML) checked field by field, its search
space mapped onto ``trial.suggest_*``. Needs neither data nor Optuna."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


from mmsent.config import ConfigError, load_yaml
from mmsent.recipes import SWEEPS, sweep_spec


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
