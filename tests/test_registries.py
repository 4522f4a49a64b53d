"""Adding a dataset, a fusion or a strategy is one class or loader plus one registry line: a toy one
of each, registered here, trains from the CLI with its own typed settings, shows in the help, and
gets its own columns in `cli.py table`."""
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import cli  # noqa: E402
from mmsent.config import check  # noqa: E402
from mmsent.data import DATASETS, DataError, DatasetSpec, Job, build_dataset, make_synthetic, option  # noqa: E402
from mmsent.config import DataConfig  # noqa: E402
from mmsent.models.fusions import FUSIONS, Head  # noqa: E402
from mmsent.strategies import STRATEGIES, Strategy  # noqa: E402


@dataclass(frozen=True)
class ToyDataSettings:
    views: int = 2

    def __post_init__(self):
        check("views", self.views >= 2, self.views, ">= 2")


def load_toy(cfg, seed=0):
    n_train = json.loads(Path(cfg.path).read_text())["n_train"] if cfg.path else 32
    return make_synthetic(n_modalities=cfg.settings.views, n_train=n_train, n_val=16, n_test=16, seed=seed)


@dataclass(frozen=True, kw_only=True)
class ToyPrepareOptions:
    src: str = option("a text file holding the number of training samples", "FILE")
    out: str = option("the JSON file load_toy reads", "FILE")


def prepare_toy(name, opts, settings, progress=None):
    """A toy `data prepare`: a raw file holding a count -> the file `load_toy` reads."""
    Path(opts.out).write_text(json.dumps({"n_train": int(Path(opts.src).read_text()), "views": settings.views}))
    progress(1, 1)
    return f"prepared {opts.out}"


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
    monkeypatch.setitem(DATASETS, "toy", DatasetSpec(load_toy, ToyDataSettings, {"m1": "One", "m0": "Zero"},
                                                        prepare=Job(prepare_toy, ToyPrepareOptions)))
    monkeypatch.setitem(FUSIONS, "toyhead", ToyHead)
    monkeypatch.setitem(STRATEGIES, "toystrat", ToyStrategy)


SMALL = ["model.dim=4", "model.seq_len=1", "train.epochs=1", "data.batch_size=16"]


def test_a_registered_dataset_fusion_and_strategy_train_from_the_cli(tmp_path, toys, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--dataset", "toy", "--fusion", "toyhead", "--strategy", "toystrat",
                     "data.views=4", "model.scale=0.5", "strategy.weight=2", "--out", str(out), *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["test"]) == {"multi", "m0", "m1", "m2", "m3"}
    cfg = res["config"]
    assert cfg["data"]["views"] == 4 and cfg["model"]["scale"] == 0.5 and cfg["strategy"]["weight"] == 2.0
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


def test_the_alpha_flag_sets_the_setting_that_declares_it(tmp_path, toys, monkeypatch, capsys):
    """`--alpha` is not tied to strategy names or to a setting called alpha: a strategy's Settings
    field that declares the flag (metadata {"flag": "--alpha"}) is what it sets; others refuse it."""
    Weighted = dataclass(frozen=True)(type("Weighted", (), {
        "__annotations__": {"weight": float}, "weight": dataclasses.field(default=1.0, metadata={"flag": "--alpha"})}))
    monkeypatch.setitem(STRATEGIES, "weighted", type("WeightedStrategy", (ToyStrategy,), {"Settings": Weighted}))
    out = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--strategy", "weighted", "--alpha", "3", "--out", str(out), *SMALL]) == 0
    assert json.loads((out / "results.json").read_text())["strategy_settings"] == {"weight": 3.0}
    assert cli.main(["train", "--strategy", "toystrat", "--alpha", "3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--alpha is DGL's weight on the unimodal losses (dgl, dgl_mh, weighted); strategy 'toystrat'" in err, err


def test_a_setting_named_like_its_sections_own_key_is_refused_by_name(tmp_path, toys, monkeypatch, capsys):
    """Settings sit flat beside the section's own keys, so a plug-in's setting called `name` (or a
    dataset's `path`) could never be set: said in one line when the component is chosen."""
    Named = dataclass(frozen=True)(type("Named", (), {"__annotations__": {"name": str}, "name": "x"}))
    monkeypatch.setitem(STRATEGIES, "named", type("NamedStrategy", (ToyStrategy,), {"Settings": Named}))
    assert cli.main(["train", "--strategy", "named", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "strategy 'named' declares the setting 'name', a key of the strategy section itself" in err, err
    Pathy = dataclass(frozen=True)(type("Pathy", (), {"__annotations__": {"path": str}, "path": ""}))
    monkeypatch.setitem(DATASETS, "toy", dataclasses.replace(DATASETS["toy"], Settings=Pathy))
    assert cli.main(["train", "--dataset", "toy", "--out", str(tmp_path / "x")]) == 2
    assert "dataset 'toy' declares the setting 'path', a key of the data section itself" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_registered_dataset_gets_its_table_rows_and_columns(tmp_path, toys):
    # `cli.py table` trains each row in a subprocess, which sees registry lines written in source, not
    # this test's runtime registration: the rows are trained in-process here with the table's overrides
    from mmsent.table import modality_columns, table_rows, write_table

    rows = table_rows(modality_columns("toy"))
    assert list(rows)[:2] == ["One-only", "Zero-only"] and rows["Zero-only"][-1] == "strategy.modality=m0"
    dirs = {}
    for method in ("Zero-only", "DGL"):
        out = tmp_path / method
        assert cli.main(["train", "--quiet", "--dataset", "toy", "--out", str(out), *rows[method], *SMALL]) == 0
        dirs[method] = [out]
    md, _ = write_table(dirs, tmp_path / "res", "toy", "test")
    text = md.read_text()
    assert "| Method | One | Zero | Multi | Val Multi |" in text and "| Zero-only | - |" in text


def test_readme_strategy_table_is_the_registrys_and_cites_real_tests():
    """README's strategy table is made from the registry (``scripts/update_readme.py``), and every
    test a strategy cites as checking it against its reference exists in tests/ (a renamed or
    deleted test breaks this)."""
    import re

    sys.path.insert(0, str(ROOT / "scripts"))
    from update_readme import render

    from mmsent.strategies import strategy_table

    readme = (ROOT / "README.md").read_text()
    assert strategy_table() in readme and render(readme) == readme, "run: python scripts/update_readme.py"
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py")), re.M))
    for name, cls in STRATEGIES.items():
        cited = set(re.findall(r"(test_\w+)\b(?!\.py)", cls.checked))
        assert cited <= defined, (name, cited - defined)


class ToyWithState(ToyStrategy):
    """A toy method as a contributor writes one: its file's class and metadata, nothing else."""

    label = "Toy"
    method = "Toy (a test's own method)"
    summary = "scales the fused loss; counts its steps"
    checked = "`test_a_strategy_is_one_file_plus_one_registry_line`"
    state = ("steps",)
    short_run = {"weight": 0.5}

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.steps = torch.zeros(())

    def train_step(self, batch):
        self.steps += 1
        return super().train_step(batch)


def test_a_strategy_is_one_file_plus_one_registry_line(tmp_path, monkeypatch, capsys):
    """Registered with one line, a toy method is a row of `cli.py table`, a row of README's table,
    a name in the CLI help, and passes the generic suites (resume == uninterrupted, its branches
    through the masked head, exact under a 2-rank process group) with the settings it declares."""
    import test_distributed
    import test_evaluate
    import test_strategies

    from mmsent.strategies import strategy_table
    from mmsent.table import strategy_rows

    monkeypatch.setitem(STRATEGIES, "toy", ToyWithState)
    assert strategy_rows()["Toy"] == ["strategy=toy"]
    assert "| `toy` | Toy (a test's own method) | scales the fused loss; counts its steps |" in strategy_table()
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "| mbsd | toy" in helptext.split("--strategy STRATEGY")[-1]  # the help lists the registry
    test_strategies.test_resume_equals_an_uninterrupted_run(tmp_path, "toy")
    test_evaluate.test_every_branch_prediction_is_the_head_on_its_masked_input("toy")
    import torch.multiprocessing as mp

    mp.spawn(_toy_ranks, args=(2, str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    two_ranks = {("toy", "regression"): torch.load(tmp_path / "out.pt", weights_only=False)}
    test_distributed.test_two_ranks_equal_one_process(two_ranks, "toy", "regression")


def _toy_ranks(rank, world, store, out):
    """test_distributed's two-rank run of the toy (registered in each spawned process, as a source
    line would register it)."""
    import torch.distributed as dist
    from test_distributed import run_steps

    STRATEGIES["toy"] = ToyWithState
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        got = (run_steps("toy", "regression"), run_steps("toy", "regression", resume=True))
        if rank == 0:
            torch.save(got, out)
        dist.barrier()  # both ranks done before either tears the group down
    finally:
        dist.destroy_process_group()


def test_a_registered_dataset_is_prepared_and_found_by_the_cli(tmp_path, toys, monkeypatch, capsys):
    """`cli.py data` offers what the registry line gives (prepare, no download) with the options its
    step declares, and the dataset's settings as bare keys; `locations` is where the data is found
    without --data."""
    (tmp_path / "raw.txt").write_text("24")
    out = tmp_path / "toy.json"
    assert cli.main(["data", "prepare", "toy", f"src={tmp_path / 'raw.txt'}", f"out={out}", "views=3"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"prepared {out}")
    assert json.loads(out.read_text()) == {"n_train": 24, "views": 3}  # the dataset's settings reach prepare
    assert cli.main(["data", "prepare", "toy", f"src={tmp_path / 'raw.txt'}", f"out={out}", "data.views=1"]) == 2
    assert "config key 'data.views' must be >= 2" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "toy", f"src={tmp_path / 'raw.txt'}", f"out={out}", "count=3"]) == 2
    assert "unknown option 'count'; valid: src, out, views" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "toy", f"src={tmp_path / 'raw.txt'}", f"out={out}"]) == 0
    assert json.loads(out.read_text())["views"] == 2
    assert cli.main(["data", "download", "toy"]) == 2
    assert "toy: no download" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "toy", f"out={out}"]) == 2
    assert "data prepare toy needs src=FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["data", "--help"])
    shown = capsys.readouterr().out
    assert "toy" in shown.split("{", 2)[2].split("}")[0]  # the dataset choices
    assert "prepare toy src=FILE out=FILE" in shown and "src=FILE: a text file holding the number" in shown

    monkeypatch.setitem(DATASETS, "toy", dataclasses.replace(DATASETS["toy"], locations=("$MMSENT_TOY",)))
    monkeypatch.delenv("MMSENT_TOY", raising=False)
    with pytest.raises(DataError, match=r"toy data not found \(looked at \$MMSENT_TOY\); pass --data PATH"):
        build_dataset(DataConfig(dataset="toy"))
    monkeypatch.setenv("MMSENT_TOY", str(out))
    assert len(build_dataset(DataConfig(dataset="toy")).train) == 24  # found through $MMSENT_TOY
    assert cli.main(["train", "--quiet", "--dataset", "toy", "--out", str(tmp_path / "run"), *SMALL]) == 0
