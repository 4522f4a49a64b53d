"""A method that never acted is said to be one: every strategy with something to do counts it
(``Strategy.counts``), the run records the counts per epoch and at the selected epoch, says in one
line when they were all 0 there, and a table marks such rows; schedules a reference defines for a
longer run scale to the run's epoch budget, and a resumed run keeps the schedule it started with."""
import json
import sys
from pathlib import Path

import pytest

from conftest import log_records
from mmsent.config import load_config
from mmsent.data import make_synthetic
from mmsent.strategies import STRATEGIES
from mmsent.train import fit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

TINY = ["data.batch_size=16", "model.dim=8", "model.hidden=16", "model.seq_len=2", "train.probe=false",
        "train.grad_probe=false", "train.patience=100"]


def _cfg(tmp_path, strategy, epochs, *args):
    return load_config(None, [f"strategy={strategy}", f"train.epochs={epochs}", *TINY, f"out={tmp_path / 'run'}", *args])


def test_a_method_that_never_acted_is_said_to_be_one(tmp_path, capsys):
    """D&R due at epoch 50 of a 3-epoch run: its count stays 0 in every epoch's log line, results.json
    says never_acted, and one line on stderr says so with its schedule."""
    ds = make_synthetic(n_modalities=2, n_train=32, n_val=16, n_test=16)
    results = fit(_cfg(tmp_path, "dnr", 3, "strategy.reinit_epoch=50"), quiet=True, dataset=ds)
    assert results["never_acted"] is True
    assert results["actions"] == {"selected_epoch": {"reinits": 0}, "run": {"reinits": 0}}
    assert results["schedule"] == {"reinit_epoch": 50}
    assert [r["actions"] for r in log_records(tmp_path / "run" / "metrics.jsonl")] == [{"reinits": 0}] * 3
    err = capsys.readouterr().err
    assert err.count("never acted") == 1 and "dnr never acted before the selected epoch" in err
    assert "reinit_epoch 50" in err
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["never_acted"] is True


def test_a_method_that_acted_counts_its_actions_up_to_the_selected_epoch(tmp_path, capsys):
    """OPM modulating every step from epoch 0: its counts grow epoch by epoch in the log, the counts
    at the selected epoch are the log line of that epoch, and nothing is said."""
    ds = make_synthetic(n_modalities=2, n_train=32, n_val=16, n_test=16)
    results = fit(_cfg(tmp_path, "opm", 3, "strategy.warmup=-1", "strategy.p_exe=1.0"), quiet=True, dataset=ds)
    logged = [r["actions"] for r in log_records(tmp_path / "run" / "metrics.jsonl")]
    assert [a["modulated_steps"] for a in logged] == [2, 4, 6]  # 2 steps an epoch
    assert results["actions"]["selected_epoch"] == logged[results["best_epoch"]]
    assert results["actions"]["run"] == logged[-1] and results["never_acted"] is False
    assert "never acted" not in capsys.readouterr().err


def test_methods_without_counts_record_none():
    """DGL changes every step's loss: nothing to count, no line, no field."""
    assert STRATEGIES["dgl"].counts == () and STRATEGIES["vanilla"].counts == ()


@pytest.mark.parametrize("name,key,default,epochs,want", [
    ("pmr", "modulation_end", 100, 15, 10),  # 100 of 150
    ("pmr", "modulation_end", 100, 40, 27),
    ("opm", "warmup", 5, 40, 2),  # 5 of 100
    ("valuation", "warmup", 5, 10, 1),  # 5 of 60
    ("dnr", "reinit_epoch", 20, 10, 2),  # 20 of 90
    ("dnr", "reinit_epoch", 20, 3, 1),  # never below one epoch
    ("lfm", "span", 200, 40, 40),  # the 200-epoch polynomial over the run
    ("amco", "modulation_end", 80, 40, 107),  # BalanceBenchmark: 80 of its 30 epochs, i.e. never closes
])
def test_reference_schedules_scale_to_the_run(tmp_path, name, key, default, epochs, want):
    """Left at None, a schedule setting is the reference's epoch scaled by epochs / reference_epochs;
    a number is taken as given; outside a run's loop the reference's own value."""
    from mmsent.config import ModelConfig
    from mmsent.models import build_model
    from mmsent.tasks import Regression

    ds = make_synthetic(n_modalities=2, n_train=8, n_val=4, n_test=4)
    fusion = STRATEGIES[name].needs_model.get("fusion", "concat")
    model = build_model(ModelConfig(dim=4, seq_len=1, hidden=0, fusion=fusion), ds, 1)
    opt = __import__("torch").optim.SGD(model.parameters(), lr=0.1)
    assert STRATEGIES[name](model, opt, Regression(), epochs=epochs).schedule[key] == want
    assert STRATEGIES[name](model, opt, Regression()).schedule[key] == default
    assert STRATEGIES[name](model, opt, Regression(), epochs=epochs, **{key: 7}).schedule[key] == 7


def test_a_resumed_run_keeps_the_schedule_it_started_with(tmp_path):
    """PMR started with 15 epochs (window to epoch 10), resumed to 30: the window stays at 10, and
    results.json records that schedule."""
    ds = make_synthetic(n_modalities=2, n_train=32, n_val=16, n_test=16)
    fit(_cfg(tmp_path, "pmr", 15, "train.epochs=2"), quiet=True, dataset=ds)  # a 2-epoch budget: window 1
    resumed = fit(_cfg(tmp_path, "pmr", 4), quiet=True, dataset=ds, resume=True)
    assert resumed["schedule"] == {"modulation_end": 1}
    betas = [sum(v for k, v in r["train"].items() if k.startswith("beta_")) for r in log_records(tmp_path / "run" / "metrics.jsonl")]
    assert len(betas) == 4 and betas[2] == betas[3] == 0.0  # past the started run's window


@pytest.mark.slow
def test_a_table_marks_a_row_whose_method_never_acted(tmp_path):
    """A table over two seeds where D&R never re-initialises: its Multi cell says so, the CSV counts it."""
    args = ["table", "--dataset", "synthetic", "--seeds", "0", "1", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "results"), "--methods", "Multimodal Baseline", "D&R",
            "data.n_train=64", "data.n_val=32", "data.n_test=32", "data.batch_size=32", "model.dim=8",
            "model.hidden=16", "model.seq_len=2", "train.epochs=2", "train.probe=false"]
    assert cli.main(args) == 0
    md = (tmp_path / "results/synthetic_table.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| D&R |"))
    assert "(never acted: 2/2 seeds)" in row
    assert "never acted" not in next(line for line in md.splitlines() if line.startswith("| Multimodal Baseline |"))
    import csv
    rows = list(csv.DictReader((tmp_path / "results/synthetic_table.csv").open()))
    assert next(r for r in rows if r["method"] == "D&R" and r["branch"] == "multi")["never_acted_seeds"] == "2"


# method -> (settings that keep it from acting for 2 epochs, the fusion it needs)
IDLE = {
    "dnr": (["strategy.reinit_epoch=50"], None),
    "opm": (["strategy.warmup=50"], None),
    "pmr": (["strategy.modulation_end=-1"], None),
    "agm": (["strategy.modulation_start=50", "strategy.conditional_clip=false"], None),
    "valuation": (["strategy.warmup=50"], None),
    "amco": (["strategy.eps=1000000"], "concat_mix"),  # in its window, but the mask size stays 0
}


@pytest.mark.parametrize("name", sorted(IDLE))
def test_never_acted_is_claimed_only_where_an_idle_step_is_plain_training(tmp_path, name):
    """"Never acted" says the selected model is vanilla. Checked against vanilla itself: two epochs
    of a method kept from acting give vanilla's weights bit for bit exactly when the class says its
    idle step is plain training (``idle_is_vanilla``), and only then does the run claim it. AMCo
    without a mask still adds its unimodal terms: different weights, and no claim."""
    import torch

    ds = make_synthetic(n_modalities=2, n_train=32, n_val=16, n_test=16)
    settings, fusion = IDLE[name]
    head = [f"model.fusion={fusion}"] if fusion else []
    common = [*head, "model.dropout=0", "train.probe=false"]
    vanilla = fit(_cfg(tmp_path / "v", "vanilla", 2, *common), quiet=True, dataset=ds)
    idle = fit(_cfg(tmp_path / "m", name, 2, *common, *settings), quiet=True, dataset=ds)
    assert not any(idle["actions"]["run"].values()), idle["actions"]
    a = torch.load(tmp_path / "v" / "run" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "m" / "run" / "last.pt", weights_only=True)["model"]
    same = all(torch.equal(a[k], b[k]) for k in a if k in b)
    assert same == STRATEGIES[name].idle_is_vanilla, (name, same)
    assert idle.get("never_acted", False) == same and vanilla.get("never_acted") is None
