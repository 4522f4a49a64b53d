"""Adding a dataset, a fusion or a strategy is one class or loader plus one registry line: a toy one
of each, registered here, trains from the CLI with its own typed settings, shows in the help, and
gets its own columns in `cli.py table`."""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from mmsent.config import check  # noqa: E402
from mmsent.data import DATASETS, DatasetSpec, make_synthetic  # noqa: E402
from mmsent.models.fusions import FUSIONS, Head  # noqa: E402
from mmsent.strategies import STRATEGIES, Strategy  # noqa: E402


@dataclass(frozen=True)
class ToyDataSettings:
    views: int = 2

    def __post_init__(self):
        check("views", self.views >= 2, self.views, ">= 2")


def load_toy(cfg, seed=0):
    ds = make_synthetic(n_modalities=cfg.settings.views, n_train=32, n_val=16, n_test=16, seed=seed)
    return ds


@dataclass(frozen=True)
class ToyHeadSettings:
    scale: float = 1.0


class ToyHead(Head):
    Settings = ToyHeadSettings

    def __init__(self, modalities, dim, seq_len, out_dim, *, hidden, dropout, scale):
        super().__init__()
        self.modalities, self.scale = list(modalities), scale
        self.fc = nn.Linear(len(self.modalities) * dim, out_dim)

    def forward(self, feats):
        return self.scale * self.fc(torch.cat([feats[m].mean(1) for m in self.modalities], -1))


@dataclass(frozen=True)
class ToyStrategySettings:
    weight: float = 1.0


class ToyStrategy(Strategy):
    Settings = ToyStrategySettings

    def train_step(self, batch):
        loss = self.settings.weight * self.task.loss(self.model(batch), batch.y)
        self.update(loss)
        return {"loss": loss.item()}


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(DATASETS, "toy", DatasetSpec(load_toy, ToyDataSettings, "synthetic", {"m1": "One", "m0": "Zero"}))
    monkeypatch.setitem(FUSIONS, "toyhead", ToyHead)
    monkeypatch.setitem(STRATEGIES, "toystrat", ToyStrategy)


SMALL = ["model.dim=4", "model.seq_len=1", "train.epochs=1", "data.batch_size=16"]


def test_a_registered_dataset_fusion_and_strategy_train_from_the_cli(tmp_path, toys, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "toy", "--fusion", "toyhead", "--strategy", "toystrat",
                     "data.views=4", "model.scale=0.5", "strategy.args.weight=2", "--out", str(out), *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]) == {"multi", "m0", "m1", "m2", "m3"}
    cfg = res["config"]
    assert cfg["data"]["views"] == 4 and cfg["model"]["scale"] == 0.5 and cfg["strategy"]["args"] == {"weight": 2.0}
    # each entry's settings are typed and range-checked like the built-in ones
    assert cli.main(["train", "--dataset", "toy", "data.views=1", "--out", str(tmp_path / "x")]) == 2
    assert "'data.views' must be >= 2, got 1" in capsys.readouterr().err
    assert cli.main(["train", "--fusion", "toyhead", "model.scale=big", "--out", str(tmp_path / "x")]) == 2
    assert "'model.scale' must be float" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    helptext = capsys.readouterr().out.replace("\n", " ")
    assert all(name in helptext for name in ("toy", "toyhead", "toystrat"))


def test_a_registered_dataset_gets_its_table_rows_and_columns(tmp_path, toys):
    # `cli.py table` trains each row in a subprocess, which sees registry lines written in source, not
    # this test's runtime registration: the rows are trained in-process here with the table's overrides
    from mmsent.table import modality_columns, table_rows, write_table

    rows = table_rows(modality_columns("toy"))
    assert list(rows)[:2] == ["One-only", "Zero-only"] and rows["Zero-only"][-1] == "strategy.args.modality=m0"
    dirs = {}
    for method in ("Zero-only", "DGL"):
        out = tmp_path / method
        assert cli.main(["train", "--quiet", "--dataset", "toy", "--out", str(out), *rows[method], *SMALL]) == 0
        dirs[method] = [out]
    md, _ = write_table(dirs, tmp_path / "res", "toy", "test")
    text = md.read_text()
    assert "| Method | One | Zero | Multi | Val Multi |" in text and "| Zero-only | - |" in text


def test_readme_strategy_table_names_real_tests_for_every_strategy():
    """Each registered strategy has a row in README's strategy table, and every test the row cites as
    checking it against its reference exists in tests/ (a renamed or deleted test breaks this)."""
    import re
    from pathlib import Path

    from mmsent.strategies import STRATEGIES

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", readme, re.M)}
    assert set(STRATEGIES) <= set(rows), set(STRATEGIES) - set(rows)
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text() for p in (root / "tests").glob("test_*.py")), re.M))
    for name in STRATEGIES:
        cited = set(re.findall(r"(test_\w+)\b(?!\.py)", rows[name].split("|")[-2]))
        assert cited <= defined, (name, cited - defined)
