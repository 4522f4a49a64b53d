"""train.log: TensorBoard event files read back equal metrics.jsonl and results.json; W&B logs the
same records offline (a stand-in module records the calls) or is refused in one line when missing."""
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from conftest import log_records  # noqa: E402

SMALL = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.batch_size=32", "model.dim=8", "model.hidden=16",
         "model.seq_len=2", "train.patience=100"]


def test_tensorboard_events_hold_the_runs_records(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--epochs", "3", "--strategy", "dgl", "train.log=tensorboard",
                     "--out", str(run), *SMALL]) == 0
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    log = log_records(run / "metrics.jsonl")
    res = json.loads((run / "results.json").read_text())
    for tag, value in (("val/multi/loss", lambda r: r["val"]["multi"]["loss"]),
                       ("val/audio/acc2_has0", lambda r: r["val"]["audio"]["acc2_has0"]),
                       ("train/loss", lambda r: r["train"]["loss"]),
                       ("grad_norm/text/unimodal", lambda r: r["grad_norm"]["text"]["unimodal"]), ("lr", lambda r: r["lr"])):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 1, 2], tag
        assert [e.value for e in events] == pytest.approx([value(r) for r in log], rel=1e-6), tag
    (test,) = acc.Scalars("test/multi/acc2_has0")
    assert test.step == res["best_epoch"] and test.value == pytest.approx(res["test"]["multi"]["acc2_has0"], rel=1e-6)
    assert any(t.startswith("probe/") for t in tags) and any(t.startswith("diag/") for t in tags)


class FakeWandb(types.ModuleType):
    """Records what mmsent asks of wandb (init's arguments, logged steps, finish)."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        wandb = self

        class Run:
            def log(self, data, step):
                wandb.logged.append((step, dict(data)))

            def finish(self):
                wandb.finished += 1

        return Run()


def test_wandb_logs_offline_and_one_run_across_resume(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    base = ["train", "--quiet", "train.log=jsonl,wandb", "--out", str(run), *SMALL]
    assert cli.main([*base, "--epochs", "2"]) == 0
    assert cli.main([*base, "--epochs", "3", "--resume"]) == 0
    first, second = fake.inits
    assert first["mode"] == "offline" and first["dir"] == str(run) and first["id"] == second["id"]
    assert first["config"]["train"]["log"] == "jsonl,wandb" and fake.finished == 2
    log = log_records(run / "metrics.jsonl")
    epochs = [(step, data) for step, data in fake.logged if "val/multi/loss" in data]
    assert [s for s, _ in epochs] == [0, 1, 2]
    assert [d["val/multi/loss"] for _, d in epochs] == [r["val"]["multi"]["loss"] for r in log]
    res = json.loads((run / "results.json").read_text())
    assert (res["best_epoch"], res["test"]["multi"]["mae"]) in [(s, d.get("test/multi/mae")) for s, d in fake.logged]


def test_a_tracker_whose_package_is_missing_is_one_line_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import and find_spec see no wandb
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert cli.main(["train", "--quiet", "train.log=wandb", "--out", str(tmp_path / "run"), *SMALL]) == 2
    assert capsys.readouterr().err.strip() == ("error: train.log=wandb needs the wandb package: pip install "
                                               "'mmsent[wandb]' (or choose train.log=jsonl)")
    assert not (tmp_path / "run").exists()


find_spec = importlib.util.find_spec
