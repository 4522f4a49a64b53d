"""Every shipped config, preset and sweep file is valid; the config layer rejects unknown keys,
wrong types and values out of range by name, and composes flags and overrides in one order."""
from pathlib import Path

import pytest

from mmsent.config import Config, ConfigError, load_config
from mmsent.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_and_every_preset_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    for name in cfg.strategy.presets:  # each preset is checked in full with its strategy chosen
        chosen = load_config(path, [f"strategy={name}"])
        assert chosen.strategy.settings == STRATEGIES[name].Settings(**cfg.strategy.presets[name])


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_are_valid_over_their_whole_space(path):
    from mmsent.recipes import resolve
    from mmsent.sweep import check_space, load_spec

    spec = load_spec(str(path))  # the spec and its whole space are checked without any data
    assert check_space(spec, str(resolve(spec.config)), spec.overrides).strategy.name == "dgl"


def test_overrides_types_and_shorthand():
    cfg = load_config(None, ["train.lr=3e-4", "strategy=dgl", "strategy.alpha=4", "model.encoders={audio: lstm}"])
    assert cfg.train.lr == 3e-4 and cfg.strategy.name == "dgl" and cfg.strategy.options == {"alpha": 4}
    assert cfg.strategy.settings.alpha == 4.0 and isinstance(cfg.strategy.settings.alpha, float)
    assert cfg.model.encoders == {"audio": "lstm"}
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int accepted for float


def test_choices_apply_before_settings_whatever_the_order():
    """`--alpha 2 strategy=dgl` ran with alpha = 1: flags came first and strategy=X dropped the args."""
    for order in (["strategy.alpha=2", "strategy=dgl"], ["strategy=dgl", "strategy.alpha=2"]):
        assert load_config(None, order).strategy.settings.alpha == 2.0, order
    # the same choice again keeps the section's settings; another choice drops them
    base = {"strategy": {"name": "dgl", "alpha": 3.0}}
    assert load_config(None, ["strategy=dgl"], base=base).strategy.options == {"alpha": 3.0}
    assert load_config(None, ["strategy=vanilla"], base=base).strategy.options == {}
    assert load_config(None, ["strategy.name=vanilla"], base=base).strategy.options == {}
    # a fusion's own settings go when another fusion is chosen, and stay for the same one
    assert load_config(None, ["model.depth=3", "model.fusion=mlpmixer"]).model.settings.depth == 3
    mixer = {"model": {"fusion": "mlpmixer", "depth": 3}}
    assert load_config(None, ["model.fusion=concat"], base=mixer).model.options == {}


def test_every_component_has_one_shape_and_the_nested_strategy_spelling_is_read():
    """Dataset, fusion and strategy settings all sit flat beside the key that chooses them, and
    to_dict writes them so. `strategy.KEY` (stored runs and commands from before) reads as
    `strategy.KEY`, whether in a stored config or an override, and is never written back."""
    cfg = load_config(None, ["data.dataset=synthetic", "data.n_train=40", "model.fusion=mlpmixer", "model.depth=3",
                             "strategy=dgl", "strategy.alpha=2"])
    tree = cfg.to_dict()
    assert tree["data"]["n_train"] == 40 and tree["model"]["depth"] == 3 and tree["strategy"]["alpha"] == 2.0
    assert "args" not in tree["strategy"] and "options" not in tree["strategy"]
    old = {"strategy": {"name": "dgl", "args": {"alpha": 3.0, "truncate_unimodal": False}}}
    for got in (load_config(None, base=old), load_config(None, ["strategy=dgl", "strategy.alpha=3",
                                                                "strategy.truncate_unimodal=false"])):
        assert got.strategy.options == {"alpha": 3.0, "truncate_unimodal": False}
        assert got.to_dict()["strategy"] == {"name": "dgl", "presets": {}, "alpha": 3.0, "truncate_unimodal": False}
    assert load_config(None, ["strategy=vanilla"], base=old).strategy.options == {}  # replaced with its strategy
    with pytest.raises(ConfigError, match="unknown config key 'strategy.alpah' for strategy 'dgl'"):
        load_config(None, ["strategy=dgl", "strategy.alpah=3"])


def test_choosing_a_strategy_keeps_the_configs_presets():
    """`cli.py table` runs `strategy=dnr` on configs/mosi.yaml: D&R must get the preset reinit_epoch."""
    cfg = load_config(ROOT / "configs/mosi.yaml", ["strategy=dnr"])
    assert cfg.strategy.name == "dnr" and cfg.strategy.options == {}
    assert cfg.strategy.settings.reinit_epoch == 5
    assert load_config(None, ["strategy=dgl"]).strategy.presets == {}


def test_component_settings_are_typed_and_belong_to_the_chosen_component():
    cfg = load_config(None, ["data.dataset=cremad", "data.sample_rate=16000", "model.fusion=mmtm", "model.ratio=4"])
    assert cfg.data.settings.sample_rate == 16000 and cfg.model.settings.ratio == 4
    assert cfg.to_dict()["data"]["sample_rate"] == 16000  # flat again, as YAML writes it
    assert load_config(base=cfg.to_dict()) == cfg  # a stored run config loads back to the same config


@pytest.mark.parametrize("override,msg", [
    ("model.fuson=concat", "unknown config key 'model.fuson' for fusion 'mlpmixer'"),
    ("model.ratio=2", "unknown config key 'model.ratio' for fusion 'mlpmixer'"),
    ("data.sample_rate=8000", "unknown config key 'data.sample_rate' for dataset 'synthetic'"),
    ("train.epochs=2.5", "'train.epochs' must be int"),
    ("train.grad_probe=3", "'train.grad_probe' must be bool"),
    ("data=5", "config section 'data' must be a mapping"),
    ("noequals", "must look like key=value"),
    ("strategy.alpha=abc", "config key 'strategy.alpha' must be float, got 'abc'"),
    ("strategy.alpha=-3", "config key 'strategy.alpha' must be a finite number >= 0, got -3.0"),
    ("strategy.alpha=.nan", "config key 'strategy.alpha' must be a finite number >= 0, got nan"),
    ("strategy.beta=1", "unknown config key 'strategy.beta'"),
    ("strategy.presets={dgl: {alpah: 2}}", "unknown config key 'strategy.presets.dgl.alpah'"),
    ("strategy.presets={nope: {}}", "unknown strategy 'nope'"),
    ("train.lr=-1", "config key 'train.lr' must be a finite number > 0, got -1.0"),
    ("train.lr=.nan", "config key 'train.lr' must be a finite number > 0, got nan"),
    ("train.epochs=0", "config key 'train.epochs' must be >= 1, got 0"),
    ("data.batch_size=0", "config key 'data.batch_size' must be >= 1, got 0"),
    ("seed=-1", "config key 'seed' must be in [0, 2**32), got -1"),
    ("device=tpu", "config key 'device' must be cpu, cuda, cuda:N, mps or auto, got 'tpu'"),
    ("train.optimizer=lbfgs", "config key 'train.optimizer' must be adam or sgd, got 'lbfgs'"),
])
def test_bad_overrides(override, msg):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["strategy=dgl", override] if override.startswith("strategy.") else [override])
    assert msg in str(e.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
