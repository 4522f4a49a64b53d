"""Run configuration: frozen dataclasses hold the defaults, YAML holds only deviations, and
``a.b=value`` overrides (values parsed as YAML) go on top. Unknown keys and wrong types raise
``ConfigError`` naming the key.
"""
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """Bad configuration; the message names the key or file."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"  # synthetic | mosi | mosei | cremad | ks | vggsound
    path: Optional[str] = None  # MMSA pickle or .csd folder (mosi/mosei); corpus folder (cremad/ks/vggsound)
    folds: Optional[str] = None  # with a .csd folder: standard (default) | video | FILE.json
    seq_len: int = 50  # with a .csd folder: words per segment
    batch_size: int = 64
    standardize: bool = True
    text_tokens: bool = False  # mosi: read BERT ids from `text_bert` instead of `text` features
    tokenizer: Optional[str] = None  # mosi: tokenize `raw_text` with this local tokenizer (or "minilm")
    max_tokens: int = 50  # token budget per utterance, [CLS]/[SEP] included
    # audio-visual corpora (cremad | ks | vggsound): spectrogram = log|STFT| of (audio_frames - 1) * hop samples
    sample_rate: int = 22050
    audio_frames: int = 299  # STFT frames (the paper: 257 x 299 on CREMA-D, 257 x 1004 on KS/VGGSound)
    n_fft: int = 512
    hop: int = 353
    frames: int = 1  # video frames per clip (1 on CREMA-D, 3 on KS/VGGSound)
    fps: int = 1  # frames per second extracted by `data prepare` from videos
    image_size: int = 224
    valid_fraction: float = 0.1  # validation carved from train (every k-th clip by id)
    num_workers: int = 0  # DataLoader workers decoding clips
    # synthetic only
    n_modalities: int = 3
    n_train: int = 800
    n_val: int = 200
    n_test: int = 400
    feature_dim: int = 16
    task: str = "regression"
    num_classes: int = 2


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "auto"  # mlp | lstm | bert | auto (bert for token ids, lstm for sequences, else mlp)
    encoders: dict = field(default_factory=dict)  # per-modality override, e.g. {audio: lstm}
    dim: int = 64  # D of every encoder output (B, L, D)
    seq_len: int = 4  # L: steps every encoder pools to (the mixer's sequence axis)
    hidden: int = 128
    dropout: float = 0.1
    fusion: str = "mlpmixer"  # concat | sum | gated | film | mlpmixer | mmtm (audio-visual)
    depth: int = 2  # mlpmixer blocks
    bert_path: Optional[str] = None  # local transformers model directory for the bert encoder, or "minilm"
    bert_pooling: str = "mean"  # mean | cls
    bert_freeze_layers: int = 0  # freeze the embeddings and this many lower transformer layers (-1: all)
    width: int = 64  # ResNet18 base width of the spectrogram/frames encoders (64 = the standard ResNet18)
    mmtm_ratio: int = 2  # MMTM squeeze ratio (the DGL authors' MMTM_Net uses 2)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "vanilla"
    args: dict = field(default_factory=dict)  # keyword arguments of the strategy class
    presets: dict = field(default_factory=dict)  # strategy name -> default args when that strategy is chosen


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


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    out: Optional[str] = None  # run directory; default runs/<dataset>-<strategy>-<fusion>-s<seed>-<time>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _check(value: Any, tp: Any, key: str) -> Any:
    if get_origin(tp) is Union:  # Optional[X]
        if value is None:
            return None
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
        tp = hints[k]
        if is_dataclass(tp):
            if isinstance(v, str) and "name" in {f.name for f in fields(tp)}:
                v = {"name": v}  # `strategy: dgl` is shorthand for `strategy: {name: dgl}`
            kwargs[k] = from_dict(tp, v or {}, key + ".")
        else:
            kwargs[k] = _check(v, tp, key)
    return cls(**kwargs)


def _is_component(dotted: str) -> bool:
    """Whether ``dotted`` is a config section chosen by name (``strategy``)."""
    tp: Any = Config
    for part in dotted.split("."):
        hints = get_type_hints(tp) if is_dataclass(tp) else {}
        if part not in hints:
            return False
        tp = hints[part]
    return is_dataclass(tp) and "name" in {f.name for f in fields(tp)}


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree[a][b][c] = value`` for ``a.b.c``; a component given by name becomes ``{name: ...}``."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = tree.get(p)
        if isinstance(node, str):  # `strategy: dgl` then `strategy.args.alpha=2`
            node = {"name": node}
        tree[p] = node = dict(node or {})
        tree = node
    old = tree.get(leaf)
    if isinstance(value, str) and isinstance(old, dict) and _is_component(dotted):
        # `strategy=dnr` over a config's strategy section: the new choice keeps the section's
        # settings for every choice (strategy.presets); only the old choice's args go
        value = {**{k: v for k, v in old.items() if k != "args"}, "name": value}
    tree[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(path: str | Path | None = None, overrides=(), base: dict | None = None) -> Config:
    """``base`` dict (e.g. a stored run config) <- YAML file <- ``key=value`` overrides."""
    tree = dict(base or {})
    if path is not None:
        tree = _merge(tree, load_yaml(path))
    for text in overrides:
        key, value = parse_override(text) if isinstance(text, str) else text
        set_dotted(tree, key, value)
    return from_dict(Config, tree)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "StrategyConfig", "TrainConfig", "load_config", "replace"]
