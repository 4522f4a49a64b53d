"""Every shipped config loads; the config layer rejects unknown keys and wrong types by name."""
from pathlib import Path

import pytest

from mmsent.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_overrides_types_and_shorthand():
    cfg = load_config(None, ["train.lr=3e-4", "strategy=dgl", "strategy.args.alpha=4", "model.encoders={audio: lstm}"])
    assert cfg.train.lr == 3e-4 and cfg.strategy.name == "dgl" and cfg.strategy.args == {"alpha": 4}
    assert cfg.model.encoders == {"audio": "lstm"}
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int accepted for float


@pytest.mark.parametrize("override,msg", [
    ("model.fuson=concat", "unknown config key 'model.fuson'"),
    ("train.epochs=2.5", "'train.epochs' must be int"),
    ("train.grad_probe=3", "'train.grad_probe' must be bool"),
    ("data=5", "config section 'data' must be a mapping"),
    ("noequals", "must look like key=value"),
])
def test_bad_overrides(override, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_choosing_a_strategy_by_name_keeps_the_configs_presets():
    """`cli.py table` runs `strategy=dnr` on configs/mosi.yaml: D&R must get the preset reinit_epoch."""
    from mmsent.train import strategy_args

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs/mosi.yaml", ["strategy=dgl", "strategy.args.alpha=2", "strategy=dnr"])
    assert cfg.strategy.name == "dnr" and cfg.strategy.args == {}  # dgl's args went with dgl
    assert strategy_args(cfg) == {"reinit_epoch": 5}
    assert load_config(None, ["strategy=dgl"]).strategy.presets == {}
