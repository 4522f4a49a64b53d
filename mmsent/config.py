"""Run configuration: frozen dataclasses hold the defaults, YAML holds only deviations, and
``a.b=value`` overrides (values parsed as YAML) go on top. Unknown keys, wrong types and values out
of range raise ``ConfigError`` naming the key.

Three sections are chosen by name from a registry, and the chosen entry declares the typed settings
of its section (timm-style plain dicts; see ``registry_of``):

* ``data.dataset`` -> ``mmsent.data.DATASETS[name].Settings``: the dataset's own keys sit flat under
  ``data`` (``data.sample_rate=16000``);
* ``model.fusion`` -> ``mmsent.models.FUSIONS[name].Settings``: flat under ``model`` (``model.depth=3``);
* ``strategy.name`` -> ``mmsent.strategies.STRATEGIES[name].Settings``: flat under ``strategy``
  (``strategy.alpha=2``), with ``strategy.presets.<name>`` giving per-strategy defaults (checked for
  every strategy named there).

All three have one shape: the choosing key and the chosen component's settings flat beside it, read
by ``from_dict`` (which also reads sweep specs). ``strategy.args.KEY``, the spelling of stored runs
and commands from before the strategy section was flat, is read as ``strategy.KEY`` and never written.

Overrides compose in one order: the config file (or a stored run's config), then every choice of a
component (``--dataset``, ``--fusion``, ``--strategy``, ``strategy=X``, ``model.fusion=X``), then all
other flags and ``key=value`` overrides, left to right. Choosing a component keeps the section's
settings when the choice is unchanged and drops those of the component it replaces.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from mmsent.checks import ConfigError, NoSettings, SettingError, check, choose, finite  # noqa: F401  (re-exported)
from mmsent.data import DATASETS
from mmsent.tracking import TRACKERS
from mmsent.models import ENCODERS
from mmsent.models.fusions import FUSIONS
from mmsent.strategies import STRATEGIES


REGISTRIES = {"dataset": DATASETS, "fusion": FUSIONS, "strategy": STRATEGIES}


def registry_of(kind: str) -> dict:
    return REGISTRIES[kind]


def settings_class(kind: str, name: str) -> type:
    """Every registry entry (a dataset spec, a head class, a strategy class) carries ``Settings``,
    whose keys sit flat in the section beside the section's own: a setting named like one of those
    could never be set, so it is refused by name (a plug-in's mistake, said when it is chosen)."""
    cls = choose(REGISTRIES[kind], kind, name).Settings
    section, config = SECTIONS[kind]
    taken = ({f.name for f in fields(config)} | set(getattr(config, "_folded", ()))) & {f.name for f in fields(cls)}
    if taken:
        raise ConfigError(f"{kind} {name!r} declares the setting {sorted(taken)[0]!r}, a key of the "
                          f"{section} section itself; rename it in its Settings")
    return cls


def encoder_keys() -> dict[str, set]:
    """Encoder name -> the ``model.*`` keys of its own ``Settings`` (flat beside the fusion's)."""
    return {name: {f.name for f in fields(cls.Settings)} for name, cls in ENCODERS.items()}


def own_keys(kind: str, name: str) -> set:
    """The keys a section's options may hold for its chosen component: the component's settings,
    and in the model section the encoders' settings beside the fusion's."""
    keys = {f.name for f in fields(settings_class(kind, name))}
    return keys | set().union(*encoder_keys().values()) if kind == "fusion" else keys


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"  # a name in mmsent.data.DATASETS
    path: Optional[str] = None  # a file or folder, as the dataset reads it
    batch_size: int = 64
    # the dataset's own settings, written flat under `data` (see DATASETS[dataset].Settings)
    options: dict = field(default_factory=dict)

    _choice = ("dataset", "dataset")  # (field naming the component, registry kind)

    def __post_init__(self):
        check("data.batch_size", self.batch_size >= 1, self.batch_size, ">= 1")

    @cached_property
    def settings(self):
        """The typed settings of the chosen dataset (validated when the config was built)."""
        return from_dict(settings_class("dataset", self.dataset), self.options, "data.")


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "auto"  # mlp | lstm | bert | auto (bert for token ids, lstm for sequences, else mlp)
    encoders: dict = field(default_factory=dict)  # per-modality override, e.g. {audio: lstm}
    dim: int = 64  # D of every encoder output (B, L, D)
    seq_len: int = 4  # L: steps every encoder pools to (the mixer's sequence axis)
    hidden: int = 128  # the head's hidden width; 0: one linear layer (concat -> fc)
    # hidden width of the MLP/LSTM encoders; 0: the same as model.hidden, or 128 when model.hidden=0
    # (a zero-width encoder would output a constant, silently)
    encoder_hidden: int = 0
    dropout: float = 0.1
    fusion: str = "mlpmixer"  # a name in mmsent.models.FUSIONS
    bert_path: Optional[str] = None  # local transformers model directory for the bert encoder, or "minilm"
    bert_pooling: str = "mean"  # mean | cls
    bert_freeze_layers: int = 0  # freeze the embeddings and this many lower transformer layers (-1: all)
    width: int = 64  # ResNet18 base width of the spectrogram/frames encoders (64 = the standard ResNet18)
    # the fusion's own settings, written flat under `model` (see FUSIONS[fusion].Settings)
    options: dict = field(default_factory=dict)

    _choice = ("fusion", "fusion")

    def __post_init__(self):
        for key in ("dim", "seq_len", "width"):
            check(f"model.{key}", getattr(self, key) >= 1, getattr(self, key), ">= 1")
        check("model.hidden", self.hidden >= 0, self.hidden, ">= 0")
        check("model.encoder_hidden", self.encoder_hidden >= 0, self.encoder_hidden, ">= 0")
        check("model.dropout", finite(self.dropout) and 0 <= self.dropout < 1, self.dropout, "in [0, 1)")
        check("model.bert_pooling", self.bert_pooling in ("mean", "cls"), self.bert_pooling, "mean or cls")

    @cached_property
    def settings(self):
        """The fusion head's typed settings (the options its ``Settings`` names)."""
        own = {f.name for f in fields(settings_class("fusion", self.fusion))}
        return from_dict(settings_class("fusion", self.fusion), {k: v for k, v in self.options.items() if k in own},
                         "model.")

    def check_encoders(self) -> None:
        """Each encoder's settings from the keys it owns, checked when the config loads (the model
        builder reads them again from the same keys)."""
        keys = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("options", "encoders")}
        keys.update(self.options)
        for name, own in encoder_keys().items():
            given = {k: v for k, v in keys.items() if k in own}
            if given:
                from_dict(ENCODERS[name].Settings, given, "model.")


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "vanilla"  # a name in mmsent.strategies.STRATEGIES
    presets: dict = field(default_factory=dict)  # strategy name -> its default settings when it is chosen
    # the strategy's own settings, written flat under `strategy` (see STRATEGIES[name].Settings)
    options: dict = field(default_factory=dict)

    _choice = ("name", "strategy")
    _folded = ("args",)  # the nested spelling of older run folders and commands, read into `options`

    def __post_init__(self):
        for name, preset in self.presets.items():
            if not isinstance(preset, dict):
                raise ConfigError(f"config key 'strategy.presets.{name}' must be a mapping, got {preset!r}")
            from_dict(settings_class("strategy", name), preset, f"strategy.presets.{name}.")

    @cached_property
    def settings(self):
        """The chosen strategy's typed settings: its preset under the ones given."""
        given = {**self.presets.get(self.name, {}), **self.options}
        return from_dict(settings_class("strategy", self.name), given, "strategy.")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    optimizer: str = "adam"  # adam | sgd (momentum 0.9, as in the DGL paper). Adam rescales each
    # parameter's step, so DGL's alpha (a constant factor on the encoders' gradients) barely matters with it.
    lr: float = 1e-3
    bert_lr: float = 5e-5
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    lr_step: int = 0  # multiply the learning rate by lr_gamma every lr_step epochs (0: constant)
    lr_gamma: float = 0.1
    amp: bool = False  # bfloat16 autocast for forward passes (on CUDA, or CPU)
    grad_clip: float = 0.0
    patience: int = 10  # epochs without validation improvement before stopping
    select: str = "loss"  # validation metric of the multimodal model used for model selection
    grad_probe: bool = True  # log per-encoder gradient norms (unimodal vs multimodal loss) each epoch
    probe: bool = True  # fit a linear probe on each frozen encoder's features after training
    log: str = "jsonl"  # where records go besides metrics.jsonl: jsonl | tensorboard | wandb, or several: "tensorboard,wandb"

    def __post_init__(self):
        for name in self.log.split(","):
            check("train.log", name.strip() in TRACKERS, self.log, f"one or more of {', '.join(TRACKERS)}, comma-separated")
        check("train.epochs", self.epochs >= 1, self.epochs, ">= 1")
        check("train.optimizer", self.optimizer in ("adam", "sgd"), self.optimizer, "adam or sgd")
        for key in ("lr", "bert_lr", "lr_gamma"):
            v = getattr(self, key)
            check(f"train.{key}", finite(v) and v > 0, v, "a finite number > 0")
        for key in ("weight_decay", "grad_clip"):
            v = getattr(self, key)
            check(f"train.{key}", finite(v) and v >= 0, v, "a finite number >= 0")
        check("train.momentum", finite(self.momentum) and 0 <= self.momentum < 1, self.momentum, "in [0, 1)")
        check("train.lr_step", self.lr_step >= 0, self.lr_step, ">= 0")
        check("train.patience", self.patience >= 0, self.patience, ">= 0")


# kind of component -> (the config section holding its settings, that section's dataclass)
SECTIONS = {"dataset": ("data", DataConfig), "fusion": ("model", ModelConfig), "strategy": ("strategy", StrategyConfig)}

DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto
    out: Optional[str] = None  # run directory; default runs/<dataset>-<strategy>-<fusion>-s<seed>-<time>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        # numpy's seed range: every RNG of a run is seeded from this one number
        check("seed", 0 <= self.seed < 2**32, self.seed, "in [0, 2**32)")
        check("device", bool(DEVICE.match(self.device)), self.device, "cpu, cuda, cuda:N, mps or auto")

    def to_dict(self) -> dict:
        """The config as a plain tree, the component options flat again (what YAML holds)."""
        tree = asdict(self)
        for section in ("data", "model", "strategy"):
            tree[section].update(tree[section].pop("options"))
        return tree


def _check(value: Any, tp: Any, key: str) -> Any:
    if get_origin(tp) is Union:  # Optional[X]
        if value is None:
            return None
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = get_args(tp) or (Any,)
        return value if item is Any else [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is dict or get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        if tp is dict:
            return dict(value)
        kt, vt = get_args(tp)  # dict[str, X]: each entry checked (a dataclass X through from_dict)
        out = {}
        for k, v in value.items():
            _check(k, kt, f"{key} (a key {k!r})")
            out[k] = from_dict(vt, v, f"{key}.{k}.") if is_dataclass(vt) else _check(v, vt, f"{key}.{k}")
        return out
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys, wrong types and values
    out of range. A section with a ``_choice`` gathers the keys it does not know into ``options``:
    they are the chosen component's settings and are checked against them."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    choice = getattr(cls, "_choice", None)
    kwargs, options = {}, {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if choice and (k == "options" or k in getattr(cls, "_folded", ())):
            options.update(_check(v, dict, key))
        elif k not in names:
            if choice:
                options[k] = v
                continue
            what = f" of {prefix.rstrip('.')}" if prefix else ""
            raise ConfigError(f"unknown config key {key!r}; valid keys{what}: {', '.join(sorted(names)) or 'none'}")
        elif is_dataclass(tp := hints[k]):
            if isinstance(v, str) and "name" in {f.name for f in fields(tp)}:
                v = {"name": v}  # `strategy: dgl` is shorthand for `strategy: {name: dgl}`
            kwargs[k] = from_dict(tp, v or {}, key + ".")
        else:
            kwargs[k] = _check(v, tp, key)
    if choice:
        name_field, kind = choice
        chosen = kwargs.get(name_field, next(f.default for f in fields(cls) if f.name == name_field))
        allowed = own_keys(kind, chosen)
        for k in options:
            if k not in allowed:
                raise ConfigError(f"unknown config key {prefix + k!r} for {kind} {chosen!r}; valid keys: "
                                  f"{', '.join(sorted(names - {'options'} | allowed))}")
        kwargs["options"] = options
    try:
        obj = cls(**kwargs)
        if choice:
            obj.settings  # noqa: B018  (validates the component's settings now, not at first use)
        if cls is ModelConfig:
            obj.check_encoders()
    except SettingError as e:
        key = e.key if "." in e.key or not prefix else f"{prefix}{e.key}"
        raise ConfigError(f"config key {key!r} {e.message}") from None
    except TypeError as e:  # a required setting without a default
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: {e}") from None
    return obj


# The keys that choose a component, and where that component's settings live in the tree.
CHOICES = {"strategy": "strategy", "strategy.name": "strategy", "model.fusion": "fusion", "data.dataset": "dataset"}


def _drop_replaced(tree: dict, dotted: str, value: Any) -> None:
    """Choosing a different component drops the settings of the one it replaces (they were written
    for it); the same choice again keeps them."""
    kind = CHOICES[dotted]
    section, cls = SECTIONS[kind]
    node = tree.get(section)
    if not isinstance(node, dict):  # absent, or `strategy: dgl` (a name with nothing beside it)
        return
    name_field = cls._choice[0]
    old = node.get(name_field, next(f.default for f in fields(cls) if f.name == name_field))
    if old != value:
        owned = set(cls._folded) if hasattr(cls, "_folded") else set()
        if old in registry_of(kind):
            owned |= {f.name for f in fields(settings_class(kind, old))}
        tree[section] = {k: v for k, v in node.items() if k not in owned}


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree[a][b][c] = value`` for ``a.b.c``; a component given by name becomes ``{name: ...}``."""
    if dotted in CHOICES and isinstance(value, str):
        _drop_replaced(tree, dotted, value)
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        child = node.get(p)
        if isinstance(child, str):  # `strategy: dgl` then `strategy.alpha=2`
            child = {"name": child}
        node[p] = child = dict(child or {})
        node = child
    old = node.get(leaf)
    if dotted == "strategy" and isinstance(value, str) and isinstance(old, dict):
        value = {**old, "name": value}  # keep the section's presets (and args, if the choice is unchanged)
    node[leaf] = value


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config never needs them, and nested aliases (a "billion
    laughs" document) make a few bytes expand to gigabytes wherever the tree is walked."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "uses an alias (*name): mmsent's YAML takes plain values "
                                              "only", mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str):
    """``yaml.safe_load`` without aliases; nesting so deep that Python's recursion gives out is a
    ``yaml.YAMLError`` too (a 3000-line RecursionError otherwise)."""
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: a -> b`` for every dotted key whose value differs between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k, "absent"), b.get(k, "absent")
        if isinstance(x, dict) and isinstance(y, dict):
            out += differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x} -> {y}")
    return out


# What a resumed run may change of its own config: the epoch budget, where it runs, what it logs to,
# and where its folder now is (a run folder moved or copied elsewhere resumes from there).
RESUMABLE = ("train.epochs:", "device:", "train.log:", "out:")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (binary data where YAML was expected)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def ordered(overrides) -> list[tuple[str, Any]]:
    """Parsed overrides in the documented order: component choices first, then the rest as given."""
    pairs = [parse_override(o) if isinstance(o, str) else tuple(o) for o in overrides]
    return [p for p in pairs if p[0] in CHOICES] + [p for p in pairs if p[0] not in CHOICES]


def load_config(path: str | Path | None = None, overrides=(), base: dict | None = None) -> Config:
    """``base`` dict (e.g. a stored run config) <- YAML file <- ``key=value`` overrides (choices first)."""
    tree = dict(base or {})
    if path is not None:
        tree = _merge(tree, load_yaml(path))
    for key, value in ordered(overrides):
        set_dotted(tree, key, value)
    return from_dict(Config, tree)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "SettingError", "StrategyConfig", "TrainConfig",
           "NoSettings", "check", "choose", "finite", "load_config"]
